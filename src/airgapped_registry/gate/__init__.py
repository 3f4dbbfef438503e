"""The gate: nginx asks it before every API request (RBAC by client certificate, admission
of signed and scanned digests in protected repositories, an audit record). docs/gate.md.
The same admission rule for clusters: :mod:`.clusterpolicy` (docs/cluster-policies.md)."""
