"""One definition of each default the engine, its command line and its callers share.

The CLI's options, the engine's dataclasses and functions take their defaults from here;
the Ansible modules and the roles that offer the same settings should leave them unset to
get these (or document these values), never write their own.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

# Seconds a registry (or a Helm repository) may take to answer one request.
REQUEST_TIMEOUT = 30.0
# Entries copied or verified side by side.
SYNC_WORKERS = 4
# Tries per entry, for transient failures only, waiting BACKOFF seconds doubled after each.
SYNC_ATTEMPTS = 3
SYNC_BACKOFF = 1.0
# Seconds a whole sync run (relock included) may take: a nightly run still going after
# this would run into the next night's.
SYNC_DEADLINE = 6 * 3600.0
# The longest wait between two tries, also when a registry's Retry-After asks for more.
LONGEST_RETRY_WAIT = 300.0
# skopeo's own retries of one copy.
SKOPEO_RETRY_TIMES = 2
# Seconds one skopeo or cosign run may take.
TOOL_TIMEOUT = 3600.0
# Above this, per entry, skopeo streams the blobs; below, its start-up, pings and per-blob
# checks cost more than the bytes, and the engine copies (see docs/performance.md).
ENGINE_COPY_MAX_BYTES = 16 * 1024 * 1024
# HEADs are cheap for a registry and the plan waits on the network: more threads than copies.
PLAN_WORKERS = 16
# Tags resolved at once; each thread keeps its own connection to a source.
RESOLVE_WORKERS = 8
# The host's state database; the run lock lives beside it.
STATE_PATH = Path("/var/lib/airgapped-registry/state.db")
# Where the relay publishes its lock in its own registry.
LOCK_REPOSITORY = "airgapped-registry/mirror-lock"
LOCK_TAG = "current"
# The registry host's Distribution, on a unix socket only nginx and root reach: what the
# scanner (and signing) read from.
BACKEND_URL = "unix:///run/docker-registry/registry.sock"
# The scanner (provenance.yaml's ``scanning`` section; docs/scanning.md).
TRIVY_PATH = Path("/usr/local/libexec/airgapped-registry/trivy")
SCAN_CACHE_DIR = Path("/var/lib/airgapped-registry/trivy")
SCAN_DB_REPOSITORY = "aquasecurity/trivy-db"
SCAN_DB_TAG = "2"
SCAN_DB_LOCK = Path("/var/lib/airgapped-registry/relay.lock")
SCAN_DB_MAX_AGE = timedelta(days=7)
SCAN_LISTEN = "127.0.0.1:5060"
SCAN_WORKERS = 2
SCAN_RECONCILE_INTERVAL = timedelta(minutes=5)
# Seconds one trivy run may take (a large image on a busy host still fits).
SCAN_TIMEOUT = 900.0
# Blobs the scanner keeps for layouts, least recently used removed first: trivy's own cache
# holds the analysis of every layer it read, so these matter only until that is done.
SCAN_BLOB_CACHE_BYTES = 2 * 1024**3
# The DB artifact's limits: its compressed layer, the unpacked trivy.db, metadata.json.
SCAN_DB_MAX_LAYER_BYTES = 2 * 1024**3
SCAN_DB_MAX_FILE_BYTES = 8 * 1024**3
SCAN_DB_MAX_METADATA_BYTES = 64 * 1024
# The audit log (docs/audit.md): its directory, the checkpoint key (public half beside it,
# ``.pub``) and the last checkpoint kept outside the log directory.
AUDIT_DIRECTORY = Path("/var/log/airgapped-registry/audit")
AUDIT_KEY = Path("/var/lib/airgapped-registry/audit/checkpoint.key")
AUDIT_HEAD = Path("/var/lib/airgapped-registry/audit/head.json")
# A signed checkpoint after this many records, and at least this often while records come.
AUDIT_CHECKPOINT_EVERY = 1000
AUDIT_CHECKPOINT_INTERVAL = 60.0
AUDIT_ROTATE_BYTES = 64 * 1024 * 1024
# Records reach the page cache before the gate answers, the disk within this many seconds
# (0: fsync before each answer).
AUDIT_FSYNC = 1.0
# nginx's record of the requests it refused while the gate was down, imported into the log.
GATE_UNAVAILABLE_LOG = Path("/var/log/airgapped-registry/gate-unavailable.log")
AUDIT_IMPORT_INTERVAL = 5.0
# The gate (docs/gate.md): its policy, the provenance file it reads the verdict store, keys
# and DB from, and the unix socket nginx asks it on (no TCP listener at all).
GATE_POLICY = Path("/etc/airgapped-registry/gate.yaml")
PROVENANCE = Path("/etc/airgapped-registry/provenance.yaml")
GATE_SOCKET = Path("/run/airgapped-registry-gate/gate.sock")
# The host's transfer key (docs/transfer.md): signs what it hands another host (the relay's
# published lock, the registry host's inventory, bundles); its public half is beside it,
# ``transfer.pub``. The trusted directory holds the public keys of the hosts this one takes
# documents from, one ``*.pub`` each.
TRANSFER_KEY = Path("/var/lib/airgapped-registry/transfer/transfer.key")
TRANSFER_TRUSTED_DIR = Path("/etc/airgapped-registry/transfer/trusted")
