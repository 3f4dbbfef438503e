# How the provenance modules (airgap_scan, airgap_signature, airgap_signing_key) find what
# they work with, documented once: the registry host's provenance file, as the CLI's --config
# reads it, names the backend, the state database, the scanner, the gateway and the keys.


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  config:
    description:
      - The registry host's provenance file (C(/etc/airgapped-registry/provenance.yaml),
        written by C(roles/scanner)), as C(--config) of C(airgap scan), C(airgap sign),
        C(airgap signature) and C(airgap signing-key).
      - It says how to reach the backend (Distribution on loopback) and the gateway
        (with the appliance's client identity), where the state database, the scanner's
        cache and the signing keys are; the modules take no registry options of their own.
    type: path
    required: true
  cosign:
    description:
      - The cosign program that signs, attests and verifies (C(--cosign) of the CLI).
      - Unset, C(cosign) as found on the C(PATH), as the CLI does.
    type: path
"""
