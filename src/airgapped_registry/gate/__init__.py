"""The gate: who may do what on the registry, and which images are served (RBAC, admission,
the audit of every decision), and the same admission rule for clusters
(:mod:`.clusterpolicy`)."""
