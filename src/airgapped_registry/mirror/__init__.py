"""The mirror domain: from a mirror list to a destination that holds exactly what it pins.

The mirror list (``spec``); the lock (``lock``: model, file, diff) and its making
(``resolve``, ``relock``, with ``sources``, ``indexes``, ``signatures``, ``helmrepo``); the
lock carried between hops as an OCI artifact (``lockstore``); the plan (one HEAD per entry);
the sync that copies what the plan says is missing (``sync``, with ``copiers``, ``ledger``,
``outcome``); and the verification of a destination against the lock (``verify``).
It builds on :mod:`~airgapped_registry.oci`, :mod:`~airgapped_registry.transport`,
:mod:`~airgapped_registry.tools` and :mod:`~airgapped_registry.state`; only the CLI (and the
Ansible modules outside the engine) sit above it.
"""
