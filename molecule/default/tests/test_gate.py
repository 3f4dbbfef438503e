"""Issue 10's acceptance for the gate on the lab, from `node` with skopeo, podman and curl.

Identities on `node`: its own certificate (CN=node, OU=pusher), `reader` (OU puller) and
`admin` (OU admin) from the lab's CA (conftest `identities`). Content: an unsigned image the
admin pushes into the protected `prod/unsigned`; the mirrored `sample/vulnerable` (signed,
fails its scan with the fixture DB's CVE) and `sample/base` (signed, passes). Whatever a test
changes on the registry host (the gate stopped, gate.yaml or provenance.yaml edited, copies
of the audit log) is put back before it ends: the rotation and scan tests run after this one.
Every request a test makes is then looked up in the audit log, with the identity that made it.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from pathlib import Path

import pytest
import yaml
from test_provenance import CONFIG, REGISTRY, STATE, podman_pull, push_unsigned

from airgap_lab.trivydb import FIXTURE_VULNERABILITY_ID

GATE_POLICY = "/etc/airgapped-registry/gate.yaml"
GATE_SOCKET = "/run/airgapped-registry-gate/gate.sock"
AUDIT_DIR = "/var/log/airgapped-registry/audit"
AUDIT_KEY = "/var/lib/airgapped-registry/audit/checkpoint.key"
AUDIT_PUB = "/var/lib/airgapped-registry/audit/checkpoint.pub"
AUDIT_HEAD = "/var/lib/airgapped-registry/audit/head.json"
UNITS = ("airgap-gate.socket", "airgap-gate.service")
MANIFEST_TYPES = ",".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
SCRATCH = "/root/gate-acceptance"
# The gate re-reads its policy on SIGHUP, its provenance settings when it starts: both
# take effect within a moment; the polls are bounded well above that.
POLL_SECONDS = 30


@pytest.fixture(scope="module")
def registry(hosts):
    return hosts["registry"]


@pytest.fixture(scope="module")
def node(hosts):
    return hosts["node"]


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"{self.status} {self.headers} {self.body[:300]!r}"


def call(node, method, path, cert_dir, headers=()):
    """One request through the gateway with curl on `node`, as ``cert_dir`` (a cert dir of
    `identities`, or the node's own)."""
    head = "--head" if method == "HEAD" else f"-X {method}"
    extra = " ".join(f"-H {shlex.quote(h)}" for h in headers)
    ran = node.run(
        f"curl -s {head} -o /root/gate-body -D /root/gate-headers -w '%{{http_code}}' "
        f"--cacert {cert_dir}/ca.crt --cert {cert_dir}/client.cert --key {cert_dir}/client.key "
        f"-H 'Accept: {MANIFEST_TYPES}' {extra} https://{REGISTRY}{path}"
    )
    assert ran.rc == 0, ran.stderr
    raw = node.check_output("cat /root/gate-headers")
    found = {}
    for line in raw.splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            found[name.strip().lower()] = value.strip()
    body = "" if method == "HEAD" else node.check_output("cat /root/gate-body")
    return Answer(int(ran.stdout.strip()), found, body)


def lock_entry(registry, destination):
    lock = json.loads(registry.check_output(f"cat {STATE}/relay.lock"))
    return next(e for e in lock["entries"] if e["destination"] == destination)


def audit_records(registry, *filters):
    """Records `airgap audit query` returns for the filters (``--identity``, ``--since``...)."""
    quoted = " ".join(shlex.quote(f) for f in filters)
    out = registry.check_output(f"airgap audit query --json {quoted}")
    # One record per line.
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def recorded(registry, since, identity, **fields):
    """The records since ``since`` made by ``identity`` (CN) with ``fields``, waited for a
    little (gate_down records are imported every few seconds)."""
    deadline = time.monotonic() + POLL_SECONDS
    while True:
        records = [
            record
            for record in audit_records(registry, "--identity", f"CN={identity}", "--since", since)
            if all(record.get(key) == value for key, value in fields.items())
        ]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def utc_now(registry):
    return registry.check_output("date -u +%Y-%m-%dT%H:%M:%S.%3NZ")


def denied_for(answer, reason):
    """A 403 naming ``reason`` (the header the gate sets; the body nginx answers on GET)."""
    assert answer.status == 403, answer
    assert answer.headers.get("x-airgap-reason") == reason or reason in answer.body, answer


@pytest.fixture(scope="module")
def unsigned(node, identities):
    """An unsigned image in a protected repository: the admin may push anywhere (the
    node's own identity, a pusher, only into the landing zones)."""
    digest = push_unsigned(
        node, "prod/unsigned", f"nobody signed this {uuid.uuid4()}\n", identities["admin"]
    )
    return {"repository": "prod/unsigned", "tag": "v1", "digest": digest}


@pytest.fixture(scope="module")
def since(registry):
    """The audit log's time at the start of this module: records before it are not ours."""
    return utc_now(registry)


# -- what site.yml installed ---------------------------------------------------------------


def test_the_gate_runs_behind_its_socket_and_nothing_else_listens(registry):
    for unit in UNITS:
        assert registry.service(unit).is_enabled and registry.service(unit).is_running, unit
    socket = registry.file(GATE_SOCKET)
    assert socket.is_socket and socket.user == "root" and socket.group == "www-data"
    assert socket.mode == 0o660
    directory = registry.file(GATE_SOCKET.rsplit("/", 1)[0])
    assert directory.mode == 0o750 and directory.group == "www-data"
    # No TCP listener of the gate's process.
    pid = registry.check_output("systemctl show -p MainPID --value airgap-gate.service")
    assert int(pid) > 0
    listening = registry.check_output("ss -Hltnp")
    assert f"pid={pid}," not in listening


def test_another_local_user_cannot_ask_the_gate(registry):
    ran = registry.run(
        "runuser -u nobody -- curl -s -o /dev/null -w '%{http_code}' "
        f"--unix-socket {GATE_SOCKET} http://gate/auth"
    )
    # curl exit 7: could not connect (permission denied on the directory or the socket).
    assert ran.rc == 7, ran.stdout + ran.stderr


def test_the_policy_enforces_after_site_yml(registry):
    policy = yaml.safe_load(registry.file(GATE_POLICY).content_string)
    assert policy["admission"]["mode"] == "enforce"
    assert policy["landing_zones"] == ["ci/"]
    assert registry.file(GATE_POLICY).mode == 0o640
    checked = json.loads(registry.check_output(f"airgap gate check --policy {GATE_POLICY}"))
    assert checked["mode"] == "enforce"


def test_the_relays_gateway_has_no_gate(hosts):
    site = hosts["relay"].check_output("nginx -T 2>/dev/null")
    assert "auth_request /" not in site and "upstream airgapped_registry_gate" not in site
    registry = hosts["registry"].check_output("nginx -T 2>/dev/null")
    assert "auth_request /_airgapped_registry_gate;" in registry
    assert not hosts["relay"].file(GATE_POLICY).exists


def test_the_checkpoint_key_and_cluster_documents_are_on_the_controller(registry, ansible_vars):
    keys = Path(ansible_vars["signing_public_keys_dir"]) / "registry"
    assert (keys / "audit-checkpoint.pub").read_text() == registry.file(AUDIT_PUB).content_string
    documents = keys / "cluster-policy"
    kyverno = list(yaml.safe_load_all((documents / "kyverno.yaml").read_text()))
    controller = [
        item
        for document in yaml.safe_load_all((documents / "policy-controller.yaml").read_text())
        for item in (document["items"] if document["kind"] == "List" else [document])
    ]
    assert {d["kind"] for d in kyverno} == {"ClusterPolicy"}
    assert {d["kind"] for d in controller} == {"ClusterImagePolicy"}
    # Both verify with the appliance's published key and name the registry.
    (key,) = [p for p in keys.glob("cosign-*.pub")]
    for text in (
        (documents / "kyverno.yaml").read_text(),
        (documents / "policy-controller.yaml").read_text(),
    ):
        assert REGISTRY in text or "registry" in text
        assert key.read_text().strip().splitlines()[1] in text


# -- admission ------------------------------------------------------------------------------


def test_an_unsigned_image_in_a_protected_repository_is_denied(
    registry, node, identities, unsigned, since
):
    reader = identities["reader"]
    repository, tag, digest = unsigned["repository"], unsigned["tag"], unsigned["digest"]
    for method in ("GET", "HEAD"):
        for reference in (tag, digest):
            answer = call(node, method, f"/v2/{repository}/manifests/{reference}", reader)
            denied_for(answer, "unsigned")
    # skopeo sees the refusal too (it reads the manifest before any policy check).
    inspected = node.run(
        f"skopeo inspect --cert-dir {reader} docker://{REGISTRY}/{repository}:{tag}"
    )
    assert inspected.rc != 0 and "denied" in inspected.stderr.lower(), inspected.stderr
    # Every denial is on record with the reader's identity and the digest the tag named.
    records = recorded(registry, since, "reader", repository=repository, decision="deny")
    assert {(r["method"], r["reference"]) for r in records} >= {
        ("GET", tag),
        ("GET", digest),
        ("HEAD", tag),
        ("HEAD", digest),
    }, records
    assert all(r["digest"] == digest for r in records), records
    assert all(r["reason"].startswith("unsigned") for r in records), records


def test_a_signed_but_vulnerable_image_is_denied_naming_the_finding(
    registry, node, identities, since
):
    entry = lock_entry(registry, "sample/vulnerable")
    answer = call(
        node, "GET", f"/v2/sample/vulnerable/manifests/{entry['tag']}", identities["reader"]
    )
    denied_for(answer, "failed")
    assert FIXTURE_VULNERABILITY_ID in answer.body, answer
    # podman on the node, with the node's own identity, is told the same.
    pulled = podman_pull(node, f"{REGISTRY}/sample/vulnerable:{entry['tag']}")
    assert pulled.rc != 0 and FIXTURE_VULNERABILITY_ID in pulled.stderr, pulled.stderr
    records = recorded(registry, since, "reader", repository="sample/vulnerable", decision="deny")
    assert records and FIXTURE_VULNERABILITY_ID in records[-1]["reason"], records
    assert records[-1]["digest"] == entry["digest"]
    assert recorded(registry, since, "node", repository="sample/vulnerable", decision="deny")


def test_a_signed_and_clean_image_is_served(registry, node, identities, since):
    entry = lock_entry(registry, "sample/base")
    reader = identities["reader"]
    copied = node.run(
        f"rm -rf /root/gate-base && skopeo copy -q --remove-signatures --src-cert-dir {reader} "
        f"docker://{REGISTRY}/sample/base:{entry['tag']} oci:/root/gate-base:v1"
    )
    assert copied.rc == 0, copied.stderr
    pulled = podman_pull(node, f"{REGISTRY}/sample/base@{entry['digest']}")
    assert pulled.rc == 0, pulled.stderr
    # A pull by tag is recorded with the digest the tag resolved to.
    records = recorded(registry, since, "reader", repository="sample/base", action="pull")
    assert any(
        r["decision"] == "allow"
        and r["reference"] == entry["tag"]
        and r["digest"] == entry["digest"]
        for r in records
    ), records
    assert recorded(
        registry, since, "node", repository="sample/base", action="pull", decision="allow"
    )


@pytest.fixture
def scratch(registry):
    registry.check_output(f"rm -rf {SCRATCH} && mkdir -m 700 {SCRATCH}")
    yield SCRATCH
    registry.check_output(f"rm -rf {SCRATCH}")


def restart_gate(registry):
    registry.check_output("systemctl restart airgap-gate.service")


def test_a_stale_db_is_denied(registry, node, identities, scratch, since):
    """The DB made stale as test_scan_acceptance does (max_age 1s), here in the file the gate
    reads; restored afterwards."""
    entry = lock_entry(registry, "sample/base")
    path = f"/v2/sample/base/manifests/{entry['digest']}"
    reader = identities["reader"]
    registry.check_output(f"cp -p {CONFIG} {scratch}/provenance.yaml")
    try:
        config = yaml.safe_load(registry.file(CONFIG).content_string)
        config["scanning"]["db"]["max_age"] = "1s"
        registry.check_output(f"printf %s {shlex.quote(yaml.safe_dump(config))} > {CONFIG}")
        restart_gate(registry)
        denied_for(call(node, "GET", path, reader), "stale")
        denied_for(call(node, "HEAD", path, reader), "stale")
    finally:
        registry.check_output(f"cp -p {scratch}/provenance.yaml {CONFIG}")
        restart_gate(registry)
    assert call(node, "GET", path, reader).status == 200
    records = recorded(registry, since, "reader", repository="sample/base", decision="deny")
    assert records and all("stale" in r["reason"] for r in records), records


# -- RBAC -----------------------------------------------------------------------------------


def test_a_puller_pushing_or_deleting_is_refused(registry, node, identities, since):
    reader = identities["reader"]
    entry = lock_entry(registry, "sample/base")
    pushed = node.run(
        f"skopeo copy -q --dest-cert-dir {reader} oci:/root/gate-base:v1 "
        f"docker://{REGISTRY}/ci/by-a-puller:v1"
    )
    assert pushed.rc != 0 and "denied" in pushed.stderr.lower(), pushed.stderr
    for method, path in (
        ("POST", "/v2/ci/by-a-puller/blobs/uploads/"),
        ("PUT", "/v2/ci/by-a-puller/manifests/v1"),
        ("DELETE", f"/v2/sample/base/manifests/{entry['digest']}"),
        ("GET", "/v2/_catalog"),
    ):
        answer = call(node, method, path, reader)
        denied_for(answer, "no_role")
    # The manifest is still there.
    assert call(node, "HEAD", f"/v2/sample/base/manifests/{entry['digest']}", reader).status == 200
    records = recorded(registry, since, "reader", decision="deny")
    assert {(r["method"], r["repository"]) for r in records} >= {
        ("POST", "ci/by-a-puller"),
        ("DELETE", "sample/base"),
    }, records


def test_a_forged_identity_header_is_ignored(registry, node, identities, since):
    reader = identities["reader"]
    repository = f"forged/{uuid.uuid4().hex[:12]}"
    forged = (
        "X-SSL-Client-S-DN: CN=admin,OU=admin",
        "X-SSL-Client-Verify: SUCCESS",
        "X-SSL-Client-Serial: 01",
        "X-Original-Method: GET",
        "X-Original-URI: /v2/",
    )
    answer = call(node, "DELETE", f"/v2/{repository}/manifests/sha256:{'0' * 64}", reader, forged)
    denied_for(answer, "no_role")
    assert call(node, "GET", "/v2/_catalog", reader, forged).status == 403
    (record,) = recorded(registry, since, "reader", repository=repository)
    assert (
        "CN=reader" in record["identity"]["subject"]
        and "admin" not in record["identity"]["subject"]
    )
    assert record["method"] == "DELETE" and record["decision"] == "deny"


# -- the gate down ------------------------------------------------------------------------


def test_with_the_gate_stopped_protected_pulls_are_refused_and_logged(
    registry, node, identities, since
):
    reader = identities["reader"]
    entry = lock_entry(registry, "sample/base")
    missing = f"down/{uuid.uuid4().hex[:12]}"
    try:
        registry.check_output(f"systemctl stop {' '.join(UNITS)}")
        assert not registry.file(GATE_SOCKET).exists
        answer = call(node, "GET", f"/v2/sample/base/manifests/{entry['digest']}", reader)
        assert answer.status == 503, answer
        assert call(node, "GET", f"/v2/{missing}/manifests/v1", reader).status == 503
        # skopeo too (podman would retry a 503 for seconds before giving up).
        inspected = node.run(
            f"skopeo inspect --raw --cert-dir {reader} "
            f"docker://{REGISTRY}/sample/base@{entry['digest']}"
        )
        assert inspected.rc != 0, inspected.stdout
    finally:
        registry.check_output(f"systemctl start {' '.join(UNITS)}")
    assert call(node, "GET", f"/v2/sample/base/manifests/{entry['digest']}", reader).status == 200
    # nginx's record of the refusal, imported into the chain once the gate is back.
    records = recorded(registry, since, "reader", repository=missing)
    assert records and records[0]["type"] == "gate_down", records


# -- the audit log --------------------------------------------------------------------------


def test_the_audit_log_verifies(registry):
    ran = registry.run("airgap audit verify --json")
    assert ran.rc == 0, ran.stdout + ran.stderr
    report = json.loads(ran.stdout)
    assert report["ok"] is True and report["records"] > 0, report
    for path, mode in ((AUDIT_DIR, 0o750), (AUDIT_KEY, 0o600)):
        assert registry.file(path).mode == mode and registry.file(path).user == "root", path


# Run on the registry host over the copy of the current file: one line changed, removed,
# swapped with the next, or the tail cut (head.json, kept outside the log, names a later
# checkpoint). Line 3 is past the chain's first record, and has records after it.
TAMPER = r"""
import json, sys
path, change = sys.argv[1:3]
lines = open(path, "rb").read().split(b"\n")[:-1]
if change == "edit":
    record = json.loads(lines[2])
    record["time"] = "2000-01-01T00:00:00.000Z"
    lines[2] = json.dumps(record, separators=(",", ":")).encode()
elif change == "remove":
    del lines[2]
elif change == "reorder":
    lines[2], lines[3] = lines[3], lines[2]
elif change == "cut":
    lines = lines[:2]
open(path, "wb").write(b"".join(line + b"\n" for line in lines))
"""


@pytest.mark.parametrize("change", ["edit", "remove", "reorder", "cut"])
def test_audit_verify_names_a_tampered_line(registry, scratch, change):
    copy = f"{scratch}/audit"
    registry.check_output(f"cp -a {AUDIT_DIR} {copy} && cp -a {AUDIT_HEAD} {scratch}/head.json")
    current = f"{copy}/audit.log"
    assert int(registry.check_output(f"wc -l < {current}")) > 4
    registry.check_output(f"cat > {scratch}/tamper.py <<'EOF'\n{TAMPER}\nEOF")
    registry.check_output(f"python3 {scratch}/tamper.py {current} {change}")
    ran = registry.run(
        f"airgap audit verify --json --directory {copy} --key {AUDIT_PUB} "
        f"--head {scratch}/head.json"
    )
    assert ran.rc != 0, ran.stdout
    report = json.loads(ran.stdout)
    bad = report["first_bad"]
    assert report["ok"] is False and bad["file"] and bad["cause"], report
    if change != "cut":
        assert bad["file"] == "audit.log" and bad["line"] in (3, 4), report
    # The log itself still verifies.
    assert registry.run("airgap audit verify --json").rc == 0


# -- the node's policy alone --------------------------------------------------------------


def test_podman_refuses_an_unsigned_image_by_policy_json_alone(registry, node, unsigned, scratch):
    """The gate made to serve the unsigned image: its policy turns prod/ into a landing zone
    (SIGHUP), which the node's policy.json does not know. skopeo, which reads without a
    policy, gets the image; podman refuses it because no signature exists."""
    reference = f"{REGISTRY}/{unsigned['repository']}@{unsigned['digest']}"
    registry.check_output(f"cp -p {GATE_POLICY} {scratch}/gate.yaml")
    policy = yaml.safe_load(registry.file(GATE_POLICY).content_string)
    policy["landing_zones"] = [*policy["landing_zones"], "prod/"]

    def served():
        return node.run(f"skopeo inspect --raw docker://{reference}").rc == 0

    try:
        registry.check_output(
            f"printf %s {shlex.quote(yaml.safe_dump(policy))} > {GATE_POLICY} "
            "&& systemctl reload airgap-gate.service"
        )
        deadline = time.monotonic() + POLL_SECONDS
        while not served():
            assert time.monotonic() < deadline, "the gate did not take prod/ as a landing zone"
            time.sleep(0.5)
        pulled = podman_pull(node, reference)
        assert pulled.rc != 0
        assert "A signature was required, but no signature exists" in pulled.stderr, pulled.stderr
    finally:
        registry.check_output(
            f"cp -p {scratch}/gate.yaml {GATE_POLICY} && systemctl reload airgap-gate.service"
        )
    deadline = time.monotonic() + POLL_SECONDS
    while served():
        assert time.monotonic() < deadline, "the gate kept prod/ as a landing zone"
        time.sleep(0.5)
