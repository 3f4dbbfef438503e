"""The appliance's signing keys and signatures, with the real cosign against a real
Distribution behind mutual TLS on loopback (the client pair plays the appliance identity at
the gateway), checked with ``cosign verify`` and with skopeo under a ``sigstoreSigned``
policy, as nodes check them."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mirror_lists import COSIGN

from airgap_lab.sample import BASE_REPOSITORY, Sample, SampleSpec, build, push
from airgapped_registry.cli import main
from airgapped_registry.mirror.lock import read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.signing import keys
from airgapped_registry.signing.config import SigningConfigError, load_signing
from airgapped_registry.signing.signer import Signer, signature_tag
from airgapped_registry.state.store import StateStore
from airgapped_registry.tools import cosign
from airgapped_registry.tools.process import Tools, run_command
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SampleSpec(repositories=1, tags_per_repository=1, base_layer_bytes=512))


@pytest.fixture
def gateway(distribution_factory, pki, sample):
    """A registry behind mutual TLS holding the sample, as the appliance reaches its gateway."""
    registry = distribution_factory(tls=pki)
    with client_of(registry, pki) as client:
        push(sample, client)
    yield registry
    registry.stop()


def client_of(registry, pki) -> RegistryClient:
    return RegistryClient(
        registry.url, ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key
    )


def provenance(directory: Path, registry, pki, password: str = PASSWORD) -> Path:
    """A provenance file whose signing section points at ``registry`` with the client pair."""
    (directory / "password").write_text(password + "\n")
    os.chmod(directory / "password", 0o600)
    path = directory / "provenance.yaml"
    path.write_text(
        f"""\
version: 1
backend: http://127.0.0.1:5000
signing:
  registry: {registry.address}
  ca_file: {pki.ca_file}
  cert_file: {pki.client_cert}
  key_file: {pki.client_key}
  keys_dir: keys
  password_file: password
  repositories: ["ci/"]
scanning: {{whatever: the scanner's own}}
"""
    )
    return path


def cosign_verify(registry, pki, public_key: Path, reference: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(COSIGN),
            "verify",
            "--key",
            str(public_key),
            "--insecure-ignore-tlog",
            "--registry-cacert",
            str(pki.ca_file),
            "--registry-client-cert",
            str(pki.client_cert),
            "--registry-client-key",
            str(pki.client_key),
            f"{registry.address}/{reference}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def init_keys(config_path: Path, now: datetime | None = None) -> dict:
    config = load_signing(config_path)
    return keys.init(config.keys_dir, config.password(), Tools(), str(COSIGN), now=now)


def airgap(capsys, *argv: str, status: int = 0) -> dict:
    """``airgap ARGV`` in this process with the project's cosign; its JSON report."""
    assert main([*argv, "--cosign", str(COSIGN)]) == status, capsys.readouterr().err
    captured = capsys.readouterr()
    return json.loads(captured.out) if captured.out else {"stderr": captured.err}


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("registry: 127", "registry: https://127"), "signing.registry: 'https://127"),
        (("  keys_dir: keys\n", ""), "signing.keys_dir: missing"),
        (("  repositories:", "  colour: blue\n  repositories:"), "signing.colour: unknown key"),
        (("version: 1", "version: 2"), "version: 2, expected 1"),
    ],
)
def test_a_bad_signing_section_names_file_and_key(tmp_path, pki, edit, message) -> None:
    class Address:
        address = "127.0.0.1:5443"

    path = provenance(tmp_path, Address(), pki)
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(SigningConfigError, match=rf"^{path}: .*{message}"):
        load_signing(path)


# -- keys ------------------------------------------------------------------------------------


def test_keys_init_rotate_retire_list(tmp_path, pki) -> None:
    class Address:
        address = "127.0.0.1:5443"

    config_path = provenance(tmp_path, Address(), pki)
    config = load_signing(config_path)
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    first = init_keys(config_path, now=start)
    assert first["changed"] is True
    (key,) = first["keys"]
    assert (key["id"], key["state"], key["retire_after"]) == ("20261130T100000Z", "active", None)
    private = config.keys_dir / "cosign-20261130T100000Z.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert PASSWORD not in private.read_text()
    assert [item["id"] for item in first["published"]] == ["20261130T100000Z"]
    assert first["published"][0]["pem"].startswith("-----BEGIN PUBLIC KEY-----")

    again = init_keys(config_path, now=start + timedelta(hours=1))
    assert again["changed"] is False
    assert again["keys"] == first["keys"]
    record = (config.keys_dir / "keys.json").read_text()

    rotated = keys.rotate(
        config.keys_dir,
        PASSWORD,
        timedelta(days=30),
        Tools(),
        str(COSIGN),
        now=start + timedelta(days=1),
    )
    assert rotated["rotated"] == {"from": "20261130T100000Z", "to": "20261201T100000Z"}
    assert [(k["id"], k["state"], k["retire_after"]) for k in rotated["keys"]] == [
        ("20261130T100000Z", "verifying", "2026-12-31T10:00:00Z"),
        ("20261201T100000Z", "active", None),
    ]
    assert [item["id"] for item in rotated["published"]] == [
        "20261201T100000Z",
        "20261130T100000Z",
    ]
    assert record != (config.keys_dir / "keys.json").read_text()

    early = keys.retire(config.keys_dir, now=start + timedelta(days=30))
    assert (early["changed"], early["retired"]) == (False, [])
    late = keys.retire(config.keys_dir, now=start + timedelta(days=31))
    assert (late["changed"], late["retired"]) == (True, ["20261130T100000Z"])
    assert [item["id"] for item in late["published"]] == ["20261201T100000Z"]
    assert keys.load(config.keys_dir).active.id == "20261201T100000Z"
    # Nothing left to retire: unchanged.
    assert keys.retire(config.keys_dir, force=True)["changed"] is False


def test_a_damaged_keys_record_is_refused_with_its_cause(tmp_path) -> None:
    record = tmp_path / "keys.json"
    record.write_text(
        json.dumps(
            {
                "version": 1,
                "keys": [
                    {
                        "id": "20261130T100000Z",
                        "state": "active",
                        "created": "2026-11-30T10:00:00Z",
                    },
                    {
                        "id": "20261201T100000Z",
                        "state": "active",
                        "created": "2026-12-01T10:00:00Z",
                    },
                ],
            }
        )
    )
    with pytest.raises(keys.SigningKeyError, match=r"keys.json: 2 active keys, exactly one"):
        keys.load(tmp_path)
    record.write_text(
        json.dumps(
            {
                "version": 1,
                "keys": [
                    {"id": "20261130T100000Z", "state": "active", "created": "2026-11-30T10:00:00Z"}
                ],
            }
        )
    )
    with pytest.raises(keys.SigningKeyError, match=r"cosign-20261130T100000Z.pub is missing"):
        keys.load(tmp_path)


# -- the password ----------------------------------------------------------------------------


class Recording:
    """The real runner, recording every argument list and environment it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv, env, timeout):
        self.calls.append((list(argv), dict(env or {})))
        return run_command(argv, env, timeout)


def test_the_password_is_never_in_an_argument_list_nor_a_message(
    tmp_path, gateway, pki, sample
) -> None:
    config_path = provenance(tmp_path, gateway, pki)
    recording = Recording()
    config = load_signing(config_path)
    keys.init(config.keys_dir, PASSWORD, Tools(recording), str(COSIGN))
    artifact = sample.artifact(f"{BASE_REPOSITORY}:1.0.0")
    with Signer(config, cosign_path=str(COSIGN), tools=Tools(recording)) as signer:
        (outcome,) = signer.sign(BASE_REPOSITORY, artifact.children[0].digest)
    assert outcome.result == "signed", outcome.detail
    assert recording.calls
    for argv, env in recording.calls:
        assert not any(PASSWORD in argument for argument in argv)
        assert env["COSIGN_PASSWORD"] == PASSWORD

    # A wrong password: cosign fails, and the message names the digest, not the password.
    (tmp_path / "password").write_text("wrong " + PASSWORD)
    with Signer(load_signing(config_path), cosign_path=str(COSIGN)) as signer:
        (failed,) = signer.sign(BASE_REPOSITORY, artifact.children[1].digest)
    assert failed.result == "failed"
    assert failed.detail.startswith(
        f"{gateway.address}/{BASE_REPOSITORY}@{artifact.children[1].digest}: cosign sign: "
    )
    assert PASSWORD not in failed.detail

    # A tool that echoes the password in its error output: masked in the message.
    def echoing(argv, env, timeout):
        return subprocess.CompletedProcess(
            argv, 1, "", f"Error: bad password {env['COSIGN_PASSWORD']}"
        )

    with pytest.raises(keys.AirgapError) as raised:
        keys.init(tmp_path / "other", PASSWORD, Tools(echoing), str(COSIGN))
    assert PASSWORD not in str(raised.value) and "***" in str(raised.value)


# -- signing ---------------------------------------------------------------------------------


def test_sign_an_index_and_its_children_then_nothing_again(tmp_path, gateway, pki, sample) -> None:
    config_path = provenance(tmp_path, gateway, pki)
    init_keys(config_path)
    config = load_signing(config_path)
    public = keys.load(config.keys_dir).active.public_key(config.keys_dir)
    artifact = sample.artifact(f"{BASE_REPOSITORY}:2.0.0")
    subjects = [artifact.digest, *(child.digest for child in artifact.children)]
    assert len(subjects) == 4

    tools = Tools()
    with Signer(config, cosign_path=str(COSIGN), tools=tools) as signer:
        report = signer.sign_all([(BASE_REPOSITORY, artifact.digest)])
    assert (report["signed"], report["skipped"], report["failed"]) == (4, 0, 0), report["errors"]
    assert [r["digest"] for r in report["results"]] == subjects
    assert report["tools"] == {"cosign": 4}
    for digest in subjects:
        verified = cosign_verify(gateway, pki, public, f"{BASE_REPOSITORY}@{digest}")
        assert verified.returncode == 0, verified.stderr
    with client_of(gateway, pki) as client:
        before = {d: client.head_manifest(BASE_REPOSITORY, signature_tag(d)) for d in subjects}

        with Signer(config, cosign_path=str(COSIGN), tools=tools) as signer:
            again = signer.sign_all([(BASE_REPOSITORY, artifact.digest)])
        assert (again["signed"], again["skipped"], again["failed"]) == (0, 4, 0)
        assert again["tools"] == {"cosign": 0}
        # One GET of the index, then per digest the .sig manifest and its one payload.
        assert again["requests"]["by_method"] == {"GET": 1 + 2 * 4}
        after = {d: client.head_manifest(BASE_REPOSITORY, signature_tag(d)) for d in subjects}
    assert after == before


def test_rotation_old_and_new_signatures_verify_until_retired(
    tmp_path, gateway, pki, sample
) -> None:
    config_path = provenance(tmp_path, gateway, pki)
    init_keys(config_path, now=datetime.now(UTC) - timedelta(days=2))
    config = load_signing(config_path)
    old_key = keys.load(config.keys_dir).active
    before, after = (sample.artifact(f"{BASE_REPOSITORY}:{tag}") for tag in ("1.0.0", "1.1.0"))
    old_child = before.children[0].digest
    new_child = after.children[0].digest
    with Signer(config, cosign_path=str(COSIGN)) as signer:
        assert signer.sign_one(BASE_REPOSITORY, old_child).result == "signed"

    keys.rotate(config.keys_dir, PASSWORD, timedelta(days=1), Tools(), str(COSIGN))
    config = load_signing(config_path)
    new_key = keys.load(config.keys_dir).active
    with Signer(config, cosign_path=str(COSIGN)) as signer:
        assert signer.sign_one(BASE_REPOSITORY, new_child).result == "signed"
        assert signer.verify(BASE_REPOSITORY, old_child)["keys"] == [old_key.id]
        assert signer.verify(BASE_REPOSITORY, new_child)["keys"] == [new_key.id]

    keys.retire(config.keys_dir, force=True)
    with Signer(load_signing(config_path), cosign_path=str(COSIGN)) as signer:
        stale = signer.verify(BASE_REPOSITORY, old_child)
        assert (stale["verified"], stale["published"]) == (False, [new_key.id])
        # The next signing run signs it with the active key: verified again, by it only.
        assert signer.sign_one(BASE_REPOSITORY, old_child).result == "signed"
        assert signer.verify(BASE_REPOSITORY, old_child)["keys"] == [new_key.id]


def test_a_signer_open_across_a_rotation_signs_with_the_new_key(
    tmp_path, gateway, pki, sample
) -> None:
    """The scan service keeps one Signer for its lifetime: a rotation made meanwhile
    (playbooks/rotate-signing-key.yml does not restart it) must still take effect."""
    config_path = provenance(tmp_path, gateway, pki)
    init_keys(config_path, now=datetime.now(UTC) - timedelta(days=2))
    config = load_signing(config_path)
    old_key = keys.load(config.keys_dir).active
    before, after = (sample.artifact(f"{BASE_REPOSITORY}:{tag}") for tag in ("1.0.0", "1.1.0"))
    with Signer(config, cosign_path=str(COSIGN)) as signer:
        assert signer.sign_one(BASE_REPOSITORY, before.children[0].digest).result == "signed"
        keys.rotate(config.keys_dir, PASSWORD, timedelta(days=1), Tools(), str(COSIGN))
        new_key = keys.load(config.keys_dir).active
        assert new_key.id != old_key.id
        signed = signer.sign_one(BASE_REPOSITORY, after.children[0].digest)
        assert (signed.result, signed.detail) == ("signed", f"key {new_key.id}")
        assert signer.verify(BASE_REPOSITORY, after.children[0].digest)["keys"] == [new_key.id]
        keys.retire(config.keys_dir, force=True)
        assert signer.verify(BASE_REPOSITORY, before.children[0].digest)["verified"] is False


# -- the mirror keeps the appliance's signature ----------------------------------------------


def cosign_cli(*args: str, cwd: Path) -> None:
    completed = subprocess.run(
        [str(COSIGN), *args],
        cwd=cwd,
        env={**os.environ, "COSIGN_PASSWORD": "upstream", "COSIGN_YES": "true"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, f"cosign {' '.join(args)}: {completed.stderr}"


def sync_into(spec_path: Path, target, pki, state: Path, force: bool = False) -> dict:
    lock_path = spec_path.with_name("mirror.lock")
    lock(load(spec_path), lock_path)
    lock_file = read_lock(lock_path)
    assert lock_file is not None
    destination = Destination(
        target.url,
        ca_file=str(pki.ca_file),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    with StateStore(state) as store:
        report = sync(
            lock_file,
            destination,
            load(spec_path),
            options=SyncOptions(cosign=str(COSIGN), backoff=0.1),
            state=store,
            lock_path=str(lock_path),
            force=force,
        )
    assert report["failed"] == 0, report["errors"]
    with destination.client() as client:
        checked = verify(lock_file, client)
    assert checked["problems"] == []
    return report


def test_the_nightly_sync_keeps_the_appliance_signature_beside_upstream(
    distribution_factory, tmp_path, pki, sample, capsys
) -> None:
    upstream = distribution_factory()
    push(sample, RegistryClient(upstream.url))
    upstream_keys = tmp_path / "upstream"
    upstream_keys.mkdir()
    cosign_cli("generate-key-pair", cwd=upstream_keys)
    artifact = sample.artifact(f"{BASE_REPOSITORY}:2.0.0")
    subjects = [artifact.digest, *(child.digest for child in artifact.children)]
    upstream_reference = f"{upstream.address}/{BASE_REPOSITORY}@{artifact.digest}"
    signing = ["--tlog-upload=false", "--allow-http-registry", "--recursive"]
    cosign_cli("sign", "--key", "cosign.key", *signing, upstream_reference, cwd=upstream_keys)
    spec_path = tmp_path / "mirror.yaml"
    spec_path.write_text(
        f"""\
version: 1
sources:
  upstream:
    registry: {upstream.address}
    insecure: true
    signatures: {{keys: [upstream/cosign.pub]}}
images:
  - {{source: upstream, repository: {BASE_REPOSITORY}, tags: ["2.0.0"]}}
"""
    )
    target = distribution_factory(tls=pki)
    sync_into(spec_path, target, pki, tmp_path / "state.db")

    config_path = provenance(tmp_path, target, pki)
    init_keys(config_path)
    config = load_signing(config_path)
    appliance = keys.load(config.keys_dir).active.public_key(config.keys_dir)
    # As the nightly job does: every digest of the lock, through the CLI.
    lock_path = str(spec_path.with_name("mirror.lock"))
    signed = airgap(capsys, "sign", "--config", str(config_path), "--lock", lock_path)
    assert (signed["signed"], signed["failed"]) == (4, 0), signed["errors"]

    def both_verify() -> None:
        for digest in subjects:
            for key in (appliance, upstream_keys / "cosign.pub"):
                checked = cosign_verify(target, pki, key, f"{BASE_REPOSITORY}@{digest}")
                assert checked.returncode == 0, f"{key.name} {digest}: {checked.stderr}"

    both_verify()
    # The nightly path again: a sync with the same lock (verify passes: the appliance's
    # layer is not a difference), one forced, one with a lost state store.
    sync_into(spec_path, target, pki, tmp_path / "state.db")
    sync_into(spec_path, target, pki, tmp_path / "state.db", force=True)
    sync_into(spec_path, target, pki, tmp_path / "fresh.db")
    both_verify()

    # Upstream signs again with another key: the lock's signatures change, the sync copies
    # them, and the appliance's layer stays.
    second = tmp_path / "second"
    second.mkdir()
    cosign_cli("generate-key-pair", cwd=second)
    cosign_cli("sign", "--key", "cosign.key", *signing, upstream_reference, cwd=second)
    report = sync_into(spec_path, target, pki, tmp_path / "state.db")
    assert report["copied"] == 1
    both_verify()
    for digest in subjects:
        checked = cosign_verify(target, pki, second / "cosign.pub", f"{BASE_REPOSITORY}@{digest}")
        assert checked.returncode == 0, checked.stderr
    again = airgap(capsys, "sign", "--config", str(config_path), "--lock", lock_path)
    assert (again["signed"], again["skipped"], again["tools"]) == (0, 4, {"cosign": 0})


# -- the command line ------------------------------------------------------------------------


def test_the_commands_sign_verify_and_manage_keys(tmp_path, gateway, pki, sample, capsys) -> None:
    config = str(provenance(tmp_path, gateway, pki))
    listed = airgap(capsys, "signing-key", "list", "--config", config)
    assert (listed["active"], listed["keys"]) == (None, [])
    before_init = airgap(
        capsys, "signature", "verify", "--config", config, f"{BASE_REPOSITORY}:1.1.0", status=1
    )
    assert (
        "no active signing key, nothing to verify with (run: airgap signing-key init"
        in (before_init["stderr"])
    )
    made = airgap(capsys, "signing-key", "init", "--config", config)
    assert made["changed"] is True
    assert airgap(capsys, "signing-key", "init", "--config", config)["changed"] is False

    artifact = sample.artifact(f"{BASE_REPOSITORY}:1.1.0")
    child = artifact.children[0].digest
    unsigned = f"{BASE_REPOSITORY}@{child}"
    assert main(["signature", "verify", "--config", config, unsigned, "--cosign", str(COSIGN)]) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(
        f"airgap: {gateway.address}/{unsigned}: no published key verifies it "
        f"(key {made['active']}: "
    )

    # A tag resolves to its digest (the index), which is signed with its children.
    report = airgap(capsys, "sign", "--config", config, f"{BASE_REPOSITORY}:1.1.0")
    assert (report["signed"], report["skipped"], report["failed"]) == (4, 0, 0)
    verified = airgap(capsys, "signature", "verify", "--config", config, unsigned)
    assert (verified["verified"], verified["keys"]) == (True, [made["active"]])
    by_tag = airgap(capsys, "signature", "verify", "--config", config, f"{BASE_REPOSITORY}:1.1.0")
    assert by_tag["verified"] is True
    # An OCI artifact (a Helm chart) is signed like an image.
    chart = airgap(capsys, "sign", "--config", config, "charts/demo:0.1.0")
    assert (chart["signed"], chart["failed"]) == (1, 0), chart["errors"]
    assert airgap(capsys, "signature", "verify", "--config", config, "charts/demo:0.1.0")[
        "verified"
    ]

    rotated = airgap(capsys, "signing-key", "rotate", "--config", config, "--overlap", "30d")
    assert [k["state"] for k in rotated["keys"]] == ["verifying", "active"]
    assert airgap(capsys, "signing-key", "retire", "--config", config)["retired"] == []
    retired = airgap(capsys, "signing-key", "retire", "--config", config, "--now")
    assert retired["retired"] == [made["active"]]
    assert [k["id"] for k in retired["published"]] == [rotated["active"]]

    # A digest that is not there: one line naming it and the cause, exit status 1.
    missing = "sha256:" + "0" * 64
    assert (
        main(["sign", "--config", config, f"{BASE_REPOSITORY}@{missing}", "--cosign", str(COSIGN)])
        == 1
    )
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(
        f"airgap: {gateway.address}/{BASE_REPOSITORY}@{missing}: no such manifest"
    )


# -- attestations ----------------------------------------------------------------------------


def vuln_predicate(path: Path, finished: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "scanner": {
                    "uri": "pkg:github/aquasecurity/trivy@0.76.0",
                    "version": "0.76.0",
                    "db": {"uri": "registry/aquasecurity/trivy-db:2", "version": "2"},
                    "result": {
                        "SchemaVersion": 2,
                        "Results": [{"Target": "x", "Vulnerabilities": []}],
                    },
                },
                "metadata": {"scanStartedOn": "2026-11-30T10:00:00Z", "scanFinishedOn": finished},
            }
        )
    )
    return path


def test_attest_once_per_predicate_and_verify_it(tmp_path, gateway, pki, sample) -> None:
    config_path = provenance(tmp_path, gateway, pki)
    init_keys(config_path)
    config = load_signing(config_path)
    public = keys.load(config.keys_dir).active.public_key(config.keys_dir)
    digest = sample.artifact(f"{BASE_REPOSITORY}:1.0.0").children[0].digest
    first = vuln_predicate(tmp_path / "first.json", "2026-11-30T10:00:05Z")
    tools = Tools()
    with Signer(config, cosign_path=str(COSIGN), tools=tools) as signer:
        assert signer.attest(BASE_REPOSITORY, digest, first).result == "signed"
        again = signer.attest(BASE_REPOSITORY, digest, first)
        assert (again.result, tools.runs["cosign"]) == ("skipped", 1), again.detail
        second = vuln_predicate(tmp_path / "second.json", "2026-12-01T10:00:05Z")
        assert signer.attest(BASE_REPOSITORY, digest, second).result == "signed"
    argv = cosign.verify_attestation_argv(
        str(COSIGN),
        public,
        f"{gateway.address}/{BASE_REPOSITORY}@{digest}",
        options=[
            "--registry-cacert",
            str(pki.ca_file),
            "--registry-client-cert",
            str(pki.client_cert),
            "--registry-client-key",
            str(pki.client_key),
        ],
    )
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    statements = [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in completed.stdout.splitlines()
    ]
    assert sorted(s["predicate"]["metadata"]["scanFinishedOn"] for s in statements) == [
        "2026-11-30T10:00:05Z",
        "2026-12-01T10:00:05Z",
    ]
    assert {s["predicateType"] for s in statements} == {cosign.VULN_PREDICATE_TYPE}


# -- signing inside the sync -------------------------------------------------------------------


def test_the_sync_signs_each_digest_before_its_tag_moves(
    distribution_factory, tmp_path, pki, sample, capsys
) -> None:
    """``airgap sync --sign-config``: the registry host's nightly run signs an entry's
    digests before writing its tag, so a node requiring signatures never sees a tag name an
    unsigned digest; when signing fails, the entry fails and its tag is not written."""
    upstream = distribution_factory()
    push(sample, RegistryClient(upstream.url))
    spec_path = tmp_path / "mirror.yaml"
    spec_path.write_text(
        f"""\
version: 1
sources:
  upstream: {{registry: {upstream.address}, insecure: true, signatures: none}}
images:
  - {{source: upstream, repository: {BASE_REPOSITORY}, tags: ["2.0.0"]}}
"""
    )
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    artifact = sample.artifact(f"{BASE_REPOSITORY}:2.0.0")
    subjects = [artifact.digest, *(child.digest for child in artifact.children)]

    def airgap_sync(target, config: Path, state: str, status: int) -> dict:
        return airgap(
            capsys,
            "sync",
            "--lock", str(lock_path),
            "--spec", str(spec_path),
            "--registry", target.url,
            "--ca-file", str(pki.ca_file),
            "--cert-file", str(pki.client_cert),
            "--key-file", str(pki.client_key),
            "--state", str(tmp_path / state),
            "--sign-config", str(config),
            "--attempts", "1",
            "--quiet",
            status=status,
        )  # fmt: skip

    # Signing fails (the password does not open the key): nothing is tagged.
    refused = distribution_factory(tls=pki)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    init_keys(provenance(wrong, refused, pki))
    (wrong / "password").write_text("not the password\n")
    failed = airgap_sync(refused, wrong / "provenance.yaml", "refused.db", status=1)
    (error,) = failed["errors"]
    assert failed["failed"] == 1 and "decryption failed" in error, failed
    with client_of(refused, pki) as client:
        assert client.head_manifest(BASE_REPOSITORY, "2.0.0") is None
        assert client.head_manifest(BASE_REPOSITORY, artifact.digest) is not None

    # Signing works: the tag is written, and every digest verifies with the appliance key.
    target = distribution_factory(tls=pki)
    good = tmp_path / "good"
    good.mkdir()
    config_path = provenance(good, target, pki)
    init_keys(config_path)
    config = load_signing(config_path)
    appliance = keys.load(config.keys_dir).active.public_key(config.keys_dir)
    report = airgap_sync(target, config_path, "state.db", status=0)
    assert (report["copied"], report["failed"]) == (1, 0), report
    for digest in subjects:
        checked = cosign_verify(target, pki, appliance, f"{BASE_REPOSITORY}@{digest}")
        assert checked.returncode == 0, f"{digest}: {checked.stderr}"
    # The nightly `sign --lock` after it finds nothing left to sign.
    again = airgap(capsys, "sign", "--config", str(config_path), "--lock", str(lock_path))
    assert (again["signed"], again["skipped"]) == (0, len(subjects)), again
