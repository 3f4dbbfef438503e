# How every engine module reaches its registry (TLS files, timeout), documented once
# (their argument spec is REGISTRY_TLS_OPTIONS in module_utils/airgap_engine.py).


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
  timeout:
    description: Seconds one request to O(registry) may take; unset, the engine's default (30).
    type: float
"""
