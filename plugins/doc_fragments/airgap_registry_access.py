# How every engine module reaches its registry (TLS files, credentials, timeout), documented
# once: their argument spec is REGISTRY_OPTIONS in module_utils/airgap_engine.py, the same
# options as the CLI's --ca-file, --cert-file, --key-file, --auth-file and --timeout.


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  ca_file:
    description: CA bundle to verify an https O(registry) with.
    type: path
  cert_file:
    description: Client certificate for a mutual TLS O(registry).
    type: path
  key_file:
    description: Key of O(cert_file).
    type: path
  auth_file:
    description:
      - A docker C(auth.json) holding credentials for O(registry) under its C(host[:port]),
        answered to a Basic or Bearer challenge (C(--auth-file) of the CLI).
      - Unset, O(registry) is reached without credentials, and one that asks for them
        fails the task with its 401.
    type: path
  timeout:
    description: Seconds one request to O(registry) may take; unset, the engine's default (30).
    type: float
"""
