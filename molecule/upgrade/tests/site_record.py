"""What a lab host holds that an upgrade must keep, as one JSON object.

usage: python3 site_record.py   (or the script on stdin: python3 -)
Run inside a lab host by create.yml before the upgrade and by the tests
after it: the SHA-256 of every TLS file the host serves or presents (an
upgrade adopts them, it never re-issues them) and the schema version
(`PRAGMA user_version`) of the mirror's state store, null where absent.
"""

import hashlib
import json
import os
import sqlite3

TLS_FILES = [
    # gateway (registry host and relay): roles/gateway's gateway_tls_dir
    "/etc/airgapped-registry/tls/ca.crt",
    "/etc/airgapped-registry/tls/server.crt",
    "/etc/airgapped-registry/tls/server.key",
    # the registry host's sync identity: roles/mirror
    "/etc/airgapped-registry/sync/ca.crt",
    "/etc/airgapped-registry/sync/client.cert",
    "/etc/airgapped-registry/sync/client.key",
    # a node's podman/skopeo material: roles/registry_client
    "/etc/containers/certs.d/registry:443/ca.crt",
    "/etc/containers/certs.d/registry:443/client.cert",
    "/etc/containers/certs.d/registry:443/client.key",
]
STATE_DB = "/var/lib/airgapped-registry/state.db"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def user_version(path):
    if not os.path.exists(path):
        return None
    # Read-only: recording must not create or migrate the store.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


print(
    json.dumps(
        {
            "tls": {path: sha256(path) for path in TLS_FILES if os.path.exists(path)},
            "state_user_version": user_version(STATE_DB),
        }
    )
)
