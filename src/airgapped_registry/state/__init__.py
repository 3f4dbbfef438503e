"""What the engine remembers between runs on a host: the SQLite state store and the run lock.

Per-entry sync state, the run log and the lock that keeps two runs on one host apart. The
store's schema carries a version and is migrated in place when an older one is opened.
Builds on :mod:`airgapped_registry.errors` only; the domains above record into it.
"""
