"""The mirror domain: from a mirror list to a destination that holds exactly what it pins.

The mirror list (``spec``), its resolution into ``mirror.lock`` (``lock``), the lock carried
between hops as an OCI artifact (``lockstore``), the plan (one HEAD per entry), the sync that
copies what the plan says is missing, and the verification of a destination against the lock.
It builds on :mod:`~airgapped_registry.oci`, :mod:`~airgapped_registry.transport` and
:mod:`~airgapped_registry.state`; only the CLI (and
the Ansible modules outside the engine) sit above it.
"""
