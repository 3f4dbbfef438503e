"""Airgapped Registry engine: everything the appliance owns that no field tool does.

The engine never imports Ansible; the modules under ``plugins/modules`` are thin
wrappers over it, and cron jobs call its CLI (``airgap``) directly.
"""

__version__ = "0.1.0"
