"""The internal CA role and the rotate/revoke playbooks, run for real on the controller.

Each test runs ``ansible-playbook`` (the role through a small fixture playbook, or
``playbooks/rotate-certs.yml`` and ``playbooks/revoke-cert.yml`` themselves) against a
temporary ``internal_ca_dir``, with an inventory of its own (``fixtures/ca/inventory.yml``:
the controller, which is also the one gateway host), and checks the outcome with the
``openssl`` command: chains, names, CRLs, file modes.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "integration" / "fixtures" / "ca"
ROLE_PLAYBOOK = FIXTURES / "ca.yml"
ROTATE = ROOT / "playbooks" / "rotate-certs.yml"
REVOKE = ROOT / "playbooks" / "revoke-cert.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

SERVER_NAMES = ["registry", "registry.lab.internal", "localhost"]
SERVER_IPS = ["127.0.0.1", "10.20.0.5"]


@dataclass
class Run:
    """One ansible-playbook run, read from the ansible.posix.json callback."""

    returncode: int
    report: dict[str, Any]
    stderr: str

    def changed(self, host: str = "localhost") -> int:
        return self.report["stats"][host]["changed"]

    def failures(self) -> list[str]:
        """Messages of every failed result, loop items included."""
        messages = []
        for play in self.report.get("plays", []):
            for task in play["tasks"]:
                for result in task["hosts"].values():
                    for item in [result, *result.get("results", [])]:
                        if item.get("failed"):
                            messages.append(str(item.get("msg", "")))
        return messages

    def expect_ok(self) -> Run:
        assert self.returncode == 0, f"ansible-playbook failed: {self.failures()}\n{self.stderr}"
        return self


@dataclass
class Lab:
    """A CA directory, the gateway's TLS directory, and the variables naming them."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def cron_file(self) -> Path:
        return self.root / "cron.d" / "airgapped-registry-rotate-certs"

    def variables(self) -> dict[str, Any]:
        return {
            "internal_ca_dir": str(self.ca),
            "internal_ca_servers": [{"name": "registry", "dns": SERVER_NAMES, "ips": SERVER_IPS}],
            "internal_ca_clients": [{"name": "node", "role": "pusher"}],
            "internal_ca_publish_dir": str(self.tls),
            "internal_ca_rotation_cron": True,
            "internal_ca_rotation_cron_file": str(self.cron_file),
            "internal_ca_rotation_cron_log": str(self.root / "rotate-certs.log"),
        }

    def run(
        self,
        playbook: Path = ROLE_PLAYBOOK,
        *options: str,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Run:
        self.cron_file.parent.mkdir(parents=True, exist_ok=True)
        variables = self.root / "vars.json"
        variables.write_text(json.dumps(self.variables() | overrides))
        variables.chmod(0o644)
        result = subprocess.run(
            [
                *prefix,
                str(ANSIBLE_PLAYBOOK),
                "-i",
                str(FIXTURES / "inventory.yml"),
                str(playbook),
                "-e",
                f"@{variables}",
                *options,
            ],
            cwd=ROOT,
            env=os.environ | {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"} | (env or {}),
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"ansible-playbook printed no JSON report:\n{result.stdout}{result.stderr}")
        return Run(result.returncode, report, result.stderr)

    def copy(self, root: Path) -> Lab:
        """The same CA in another directory (modes kept), for a test that changes it."""
        shutil.copytree(self.root, root, symlinks=True)
        return Lab(root)

    def state(self) -> dict[str, str]:
        return yaml.safe_load((self.ca / "authorities.yml").read_text())

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        return {
            str(path.relative_to(self.root)): (path.stat().st_mode, path.read_bytes())
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and path.name != "vars.json"
        }


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"openssl {' '.join(map(str, args))}: {result.stderr.strip()}")
    return result


def verify(lab: Lab, certificate: Path, *, crl: bool = True) -> subprocess.CompletedProcess[str]:
    """openssl verify against the trust bundle and, by default, every CRL."""
    options = ["-crl_check", "-CRLfile", lab.ca / "crl.pem"] if crl else []
    return openssl(
        "verify", "-CAfile", lab.ca / "ca-bundle.crt", *options, certificate, check=False
    )


def serial(certificate: Path) -> str:
    return openssl("x509", "-in", certificate, "-noout", "-serial").stdout.strip().split("=")[1]


def issuer(certificate: Path) -> str:
    return openssl("x509", "-in", certificate, "-noout", "-issuer", "-nameopt", "RFC2253").stdout


def pem_blocks(path: Path, kind: str) -> int:
    return path.read_text().count(f"-----BEGIN {kind}-----")


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """A CA with one server and one client, issued once for the module: read, never change."""
    lab = Lab(tmp_path_factory.mktemp("internal-ca"))
    run = lab.run().expect_ok()
    assert run.changed() > 0
    return lab


def test_certificates_chain_to_the_ca_with_their_names_and_roles(issued: Lab) -> None:
    server, client = issued.ca / "servers" / "registry.crt", issued.ca / "clients" / "node.crt"
    for certificate in (server, client):
        result = verify(issued, certificate)
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr

    names = openssl("x509", "-in", server, "-noout", "-ext", "subjectAltName").stdout
    for name in SERVER_NAMES:
        assert f"DNS:{name}" in names
    for address in SERVER_IPS:
        assert f"IP Address:{address}" in names

    subject = openssl("x509", "-in", client, "-noout", "-subject", "-nameopt", "RFC2253").stdout
    assert subject.strip() == "subject=CN=node,OU=pusher,O=Airgapped Registry"
    usage = {
        path.parent.name: openssl("x509", "-in", path, "-noout", "-ext", "extendedKeyUsage").stdout
        for path in (server, client)
    }
    assert "TLS Web Server Authentication" in usage["servers"]
    assert "TLS Web Client Authentication" in usage["clients"]
    assert "Client" not in usage["servers"] and "Server" not in usage["clients"]

    assert pem_blocks(issued.ca / "ca-bundle.crt", "CERTIFICATE") == 1
    ca_text = openssl("x509", "-in", issued.ca / "ca-bundle.crt", "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:0" in ca_text and "NIST CURVE: P-256" in ca_text
    assert "NIST CURVE: P-256" in openssl("x509", "-in", server, "-noout", "-text").stdout


def test_keys_are_readable_by_their_owner_only(issued: Lab) -> None:
    keys = sorted(issued.ca.rglob("*.key"))
    assert [key.parent.name for key in keys] == ["clients", "private", "servers"]
    assert {key.name: oct(key.stat().st_mode & 0o777) for key in keys} == {
        key.name: "0o600" for key in keys
    }
    assert oct(issued.ca.stat().st_mode & 0o777) == "0o700"


def test_crl_is_signed_by_the_ca_and_lists_nothing_yet(issued: Lab) -> None:
    openssl("crl", "-in", issued.ca / "crl.pem", "-noout", "-CAfile", issued.ca / "ca-bundle.crt")
    text = openssl("crl", "-in", issued.ca / "crl.pem", "-noout", "-text").stdout
    assert "No Revoked Certificates" in text
    next_update = openssl("crl", "-in", issued.ca / "crl.pem", "-noout", "-nextupdate").stdout
    expires = datetime.datetime.strptime(
        next_update.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"
    ).replace(tzinfo=datetime.UTC)
    # internal_ca_crl_lifetime defaults to 30 days.
    assert expires - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=29)


def test_cron_job_runs_rotate_certs_daily(issued: Lab) -> None:
    (job,) = [line for line in issued.cron_file.read_text().splitlines() if line[:1].isdigit()]
    assert job.startswith("17 3 * * * root cd ")
    assert str(ANSIBLE_PLAYBOOK) in job and "playbooks/rotate-certs.yml" in job
    assert f"-i {FIXTURES / 'inventory.yml'}" in job
    assert f"&& {ANSIBLE_PLAYBOOK} -i" in job


def test_cron_job_carries_the_environment_it_is_given(issued: Lab, tmp_path: Path) -> None:
    """cron passes a job almost no environment: the lab's prefix goes on the job's line."""
    lab = issued.copy(tmp_path / "lab")
    environment = {"AIRGAP_LAB_PREFIX": "agr", "B": "two words"}
    lab.run(internal_ca_rotation_cron_environment=environment).expect_ok()
    (job,) = [line for line in lab.cron_file.read_text().splitlines() if line[:1].isdigit()]
    assert f"&& AIRGAP_LAB_PREFIX=agr B='two words' {ANSIBLE_PLAYBOOK} -i" in job


EXPIRY = ROOT / "playbooks" / "cert-expiry.yml"


def expiry_warning(run: Run) -> str | None:
    """The warning cert-expiry.yml gave, if any: an Ansible warning of its last task."""
    for play in run.report["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get("localhost", {})
            if task["task"]["name"].endswith("Warn that nothing renews the certificates"):
                if result.get("skipped"):
                    return None
                (warning,) = result["warnings"]
                assert warning == result["msg"]
                return warning
    return None


def test_expiry_is_a_warning_when_no_rotation_is_scheduled(issued: Lab) -> None:
    run = issued.run(EXPIRY, internal_ca_rotation_cron=False).expect_ok()
    assert run.changed() == 0
    message = expiry_warning(run)
    assert message is not None and "internal_ca_rotation_cron: true" in message
    # The first to expire: the server certificate (90 days) before the client (365).
    not_after = openssl("x509", "-in", issued.ca / "servers" / "registry.crt", "-noout", "-enddate")
    first = datetime.datetime.strptime(
        not_after.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"
    )
    assert f"expires on {first:%Y-%m-%d %H:%M:%S} UTC" in message
    assert "servers/registry.crt" in message
    next_update = openssl("crl", "-in", issued.ca / "crl.pem", "-noout", "-nextupdate")
    crl = datetime.datetime.strptime(
        next_update.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"
    )
    assert f"the CRLs expire on {crl:%Y-%m-%d %H:%M:%S} UTC" in message


def test_no_expiry_warning_when_the_rotation_is_scheduled(issued: Lab) -> None:
    run = issued.run(EXPIRY).expect_ok()
    assert expiry_warning(run) is None


def test_second_run_changes_nothing(issued: Lab) -> None:
    before = issued.snapshot()
    assert issued.run().expect_ok().changed() == 0
    assert issued.snapshot() == before


def test_check_mode_writes_nothing(issued: Lab, tmp_path: Path) -> None:
    fresh = Lab(tmp_path / "fresh")
    fresh.root.mkdir()
    assert fresh.run(ROLE_PLAYBOOK, "--check").expect_ok().changed() > 0
    assert not fresh.ca.exists()

    lab = issued.copy(tmp_path / "existing")
    before = lab.snapshot()
    run = lab.run(
        ROLE_PLAYBOOK,
        "--check",
        internal_ca_force_rotate="all",
        internal_ca_ca_rotation="introduce",
    ).expect_ok()
    assert run.changed() > 0
    assert lab.snapshot() == before


def _resign(lab: Lab, certificate: Path, *, age: float, left: float) -> None:
    """Sign ``certificate`` again with the lab's CA, its validity moved to the given days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    state = lab.state()
    ca_key = serialization.load_pem_private_key(
        (lab.ca / "private" / f"{state['current']}.key").read_bytes(), password=None
    )
    original = x509.load_pem_x509_certificate(certificate.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .public_key(original.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=age))
        .not_valid_after(now + datetime.timedelta(days=left))
    )
    for extension in original.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    signed = builder.sign(ca_key, hashes.SHA256())
    certificate.write_bytes(signed.public_bytes(serialization.Encoding.PEM))


def test_renews_a_certificate_in_the_last_third_of_its_lifetime(
    issued: Lab, tmp_path: Path
) -> None:
    lab = issued.copy(tmp_path / "lab")
    server, client = lab.ca / "servers" / "registry.crt", lab.ca / "clients" / "node.crt"
    # 25-day lifetimes: the client has 5 days left (< 1/3), the server 20 (> 1/3).
    _resign(lab, client, age=20, left=5)
    _resign(lab, server, age=5, left=20)
    kept, due = server.read_bytes(), serial(client)
    old_key = (lab.ca / "clients" / "node.key").read_bytes()

    lab.run().expect_ok()

    assert server.read_bytes() == kept
    assert serial(client) != due
    assert (lab.ca / "clients" / "node.key").read_bytes() != old_key, "renewal keeps the key"
    end = openssl("x509", "-in", client, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
    not_after = datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)
    assert not_after - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=360)
    assert verify(lab, client).returncode == 0


def test_rotate_certs_replaces_and_installs_the_server_certificate(
    issued: Lab, tmp_path: Path
) -> None:
    lab = issued.copy(tmp_path / "lab")
    server = lab.ca / "servers" / "registry.crt"
    before, client = serial(server), (lab.ca / "clients" / "node.crt").read_bytes()

    run = lab.run(ROTATE, "-e", "internal_ca_force_rotate=registry").expect_ok()

    assert serial(server) != before
    assert (lab.ca / "clients" / "node.crt").read_bytes() == client
    installed = {name: lab.tls / name for name in ("server.crt", "server.key", "ca.crt", "crl.pem")}
    assert installed["server.crt"].read_bytes() == server.read_bytes()
    assert (
        installed["server.key"].read_bytes() == (lab.ca / "servers" / "registry.key").read_bytes()
    )
    assert installed["ca.crt"].read_bytes() == (lab.ca / "ca-bundle.crt").read_bytes()
    assert installed["crl.pem"].read_bytes() == (lab.ca / "crl.pem").read_bytes()
    assert oct(installed["server.key"].stat().st_mode & 0o777) == "0o600"
    assert run.changed("registry") > 0

    again = lab.run(ROTATE).expect_ok()
    assert (again.changed("localhost"), again.changed("registry")) == (0, 0)


def test_revoke_puts_the_serial_in_the_crl_and_verification_fails(
    issued: Lab, tmp_path: Path
) -> None:
    lab = issued.copy(tmp_path / "lab")
    revoked = tmp_path / "node-revoked.crt"
    shutil.copy(lab.ca / "clients" / "node.crt", revoked)
    assert verify(lab, revoked).returncode == 0

    lab.run(REVOKE, "-e", "identity=node", "-e", "reason=key_compromise").expect_ok()

    number = serial(revoked)
    crl = openssl("crl", "-in", lab.ca / "crl.pem", "-noout", "-text").stdout
    assert f"Serial Number: {number}" in crl and "Key Compromise" in crl
    result = verify(lab, revoked)
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
    ledger = yaml.safe_load((lab.ca / "revoked.yml").read_text())["revoked"]
    assert [(entry["identity"], entry["serial_number"]) for entry in ledger] == [
        ("node", int(number, 16))
    ]
    # node is still listed: it has a new certificate, which is not revoked.
    assert serial(lab.ca / "clients" / "node.crt") != number
    assert verify(lab, lab.ca / "clients" / "node.crt").returncode == 0
    assert (lab.tls / "crl.pem").read_bytes() == (lab.ca / "crl.pem").read_bytes()


def test_revoking_an_unknown_identity_fails_clearly(issued: Lab, tmp_path: Path) -> None:
    lab = issued.copy(tmp_path / "lab")
    run = lab.run(REVOKE, "-e", "identity=ghost")
    assert run.returncode != 0
    (message,) = run.failures()
    assert "'ghost': unknown identity" in message and "node, registry" in message
    assert not (lab.ca / "revoked.yml").exists()
    assert not lab.tls.exists(), "the gateways were touched although the CA failed"


def test_ca_rotation_keeps_old_and_new_trusted_until_retired(issued: Lab, tmp_path: Path) -> None:
    lab = issued.copy(tmp_path / "lab")
    client = lab.ca / "clients" / "node.crt"
    old_ca = lab.state()["current"]
    signed_by_old = tmp_path / "node-old-ca.crt"
    shutil.copy(client, signed_by_old)

    lab.run(ROTATE, internal_ca_ca_rotation="introduce").expect_ok()
    new_ca = lab.state()["next"]
    assert lab.state() == {"current": old_ca, "next": new_ca}
    assert pem_blocks(lab.tls / "ca.crt", "CERTIFICATE") == 2
    assert client.read_bytes() == signed_by_old.read_bytes(), "introduce must not reissue"

    lab.run(ROTATE, internal_ca_ca_rotation="switch").expect_ok()
    assert lab.state() == {"current": new_ca, "previous": old_ca}
    for certificate in (client, lab.ca / "servers" / "registry.crt"):
        assert f"CN=Airgapped Registry CA {new_ca}" in issuer(certificate)
        assert verify(lab, certificate).returncode == 0
    # The overlap: what the old CA signed is still accepted, CRL checks included.
    assert verify(lab, signed_by_old).returncode == 0
    assert pem_blocks(lab.ca / "crl.pem", "X509 CRL") == 2

    lab.run(ROTATE, internal_ca_ca_rotation="retire").expect_ok()
    assert lab.state() == {"current": new_ca}
    assert pem_blocks(lab.tls / "ca.crt", "CERTIFICATE") == 1
    assert verify(lab, signed_by_old, crl=False).returncode != 0
    assert verify(lab, client).returncode == 0
    assert not (lab.ca / "private" / f"{old_ca}.key").exists()


def test_switch_without_introduce_is_refused(issued: Lab, tmp_path: Path) -> None:
    lab = issued.copy(tmp_path / "lab")
    before = lab.snapshot()
    run = lab.run(ROLE_PLAYBOOK, internal_ca_ca_rotation="switch")
    assert run.returncode != 0
    assert any("no next CA to switch to; run `introduce` first" in m for m in run.failures())
    assert lab.snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"internal_ca_clients": [{"name": "node", "role": "root"}]},
            "value of role must be one of: puller, pusher, admin, got: root",
            id="client-role",
        ),
        pytest.param(
            {"internal_ca_server_lifetime": "90"},
            "Not a lifetime (a number and w, d, h, m or s, e.g. 90d or 1w2d): "
            "internal_ca_server_lifetime '90'",
            id="lifetime",
        ),
        pytest.param(
            {"internal_ca_force_rotate": ["ghost"]},
            "internal_ca_force_rotate: unknown identity ghost",
            id="force-unknown",
        ),
        pytest.param(
            {"internal_ca_clients": [{"name": "registry", "role": "admin"}]},
            "identity names registry appear more than once",
            id="duplicate",
        ),
        pytest.param(
            {"internal_ca_servers": [{"name": "registry"}]},
            "internal_ca_servers: registry list no `dns` and no `ips`",
            id="server-without-names",
        ),
        pytest.param(
            {"internal_ca_clients": [{"name": "../node", "role": "admin"}]},
            "identity names ../node are not usable as file names",
            id="name-with-path",
        ),
    ],
)
def test_bad_input_fails_before_writing(
    tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    lab = Lab(tmp_path)
    run = lab.run(**overrides)
    assert run.returncode != 0
    assert any(expected in " ".join(message.split()) for message in run.failures()), run.failures()
    assert not lab.ca.exists()


def test_expired_ca_stops_the_run(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    # A one-second CA: on a slow run it has expired by the time the role checks it; on a
    # fast one the run passes, and the next run, two seconds later, meets it expired.
    run = lab.run(internal_ca_ca_lifetime="1s")
    issued = {path: path.stat().st_mtime_ns for path in lab.ca.glob("*/*.crt")}
    if run.returncode == 0:
        time.sleep(2)
        run = lab.run(internal_ca_ca_lifetime="1s")
    assert run.returncode != 0
    (message,) = run.failures()
    assert "expired at" in message and "internal_ca_ca_rotation=introduce" in message
    # Nothing is issued under an expired CA.
    assert {path: path.stat().st_mtime_ns for path in lab.ca.glob("*/*.crt")} == issued


def test_unwritable_ca_dir_fails_naming_it(tmp_path: Path) -> None:
    """A CA directory that cannot be created (its parent is a file): root is
    not stopped by permissions, but the cause still reaches the operator."""
    (tmp_path / "not-a-directory").write_text("a file where a directory should be\n")
    target = tmp_path / "not-a-directory" / "ca"
    run = Lab(tmp_path / "lab").run(internal_ca_dir=str(target))
    assert run.returncode != 0
    message = " ".join(run.failures()[-1].split())
    assert f"internal_ca_dir {target}: cannot create it" in message
    assert "as user root" in message
    assert "Not a directory" in message or "not a directory" in message
