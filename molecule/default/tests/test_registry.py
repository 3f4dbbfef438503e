"""The registry host: Distribution behind the mTLS gateway, used from `node`.

Everything here runs real clients on the lab hosts (skopeo, curl, openssl)
against the converged appliance, and the project's own playbooks
(rotate-certs.yml, revoke-cert.yml) from the controller.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

REGISTRY = "registry:443"
CERTS = f"/etc/containers/certs.d/{REGISTRY}"
# The same files by the bare host name (a link the role makes): curl reads a
# ':' in --cert as the start of a password.
CURL_CERTS = "/etc/containers/certs.d/registry"
CA = f"{CERTS}/ca.crt"
MANIFEST_URL = f"https://{REGISTRY}/v2/ci/hello/manifests/v1"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def http_status(node, url, cert_dir=None):
    client = f"--cert {cert_dir}/client.cert --key {cert_dir}/client.key" if cert_dir else ""
    out = node.run(
        f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Accept: {ACCEPT}' --cacert {CA} {client} "
        f"'{url}'"
    )
    return out.stdout.strip()


def copy_in(node, local, files):
    """docker cp into the node (its /tmp is a tmpfs docker cp cannot reach)."""
    for source, target in files:
        node.run(f"mkdir -p $(dirname {target})")
        subprocess.run(["docker", "cp", "-q", str(source), f"{local}:{target}"], check=True)


@pytest.fixture(scope="module")
def node(hosts):
    return hosts["node"]


@pytest.fixture(scope="module")
def node_container(lab):
    return lab["hosts"]["node"]["container"]


@pytest.fixture(scope="module")
def pushed(node):
    """A small image built on node (which reaches no upstream) and pushed
    through the gateway with the node's own client certificate (a pusher: into
    the landing zone ci/, the only place the gate lets it push)."""
    build = node.run(
        "set -e; rm -rf /root/layout /root/bh; "
        "B='buildah --storage-driver vfs --root /root/bh/root --runroot /root/bh/run'; "
        "c=$($B from scratch); printf 'hello from the airgap\\n' > /root/hello.txt; "
        "$B copy $c /root/hello.txt /hello.txt >/dev/null; "
        "$B commit -q --format oci $c oci:/root/layout:v1 >/dev/null; $B rm $c >/dev/null"
    )
    assert build.rc == 0, build.stderr
    push = node.run(
        "skopeo copy -q --preserve-digests --digestfile /root/pushed.digest "
        f"oci:/root/layout:v1 docker://{REGISTRY}/ci/hello:v1"
    )
    assert push.rc == 0, push.stderr
    return {
        "layout": node.check_output("skopeo inspect --format '{{.Digest}}' oci:/root/layout:v1"),
        "pushed": node.check_output("cat /root/pushed.digest"),
    }


def test_push_and_read_back_with_the_client_certificate(node, pushed):
    back = node.check_output(
        f"skopeo inspect --format '{{{{.Digest}}}}' docker://{REGISTRY}/ci/hello:v1"
    )
    assert pushed["pushed"] == pushed["layout"]
    assert back == pushed["pushed"]
    assert http_status(node, MANIFEST_URL, CURL_CERTS) == "200"


def test_without_a_client_certificate_nothing_is_served(node, pushed):
    assert http_status(node, MANIFEST_URL) == "400"
    node.run("rm -rf /root/probe/ca-only && mkdir -p /root/probe/ca-only")
    node.run(f"cp {CA} /root/probe/ca-only/")
    result = node.run(
        f"skopeo inspect --cert-dir /root/probe/ca-only docker://{REGISTRY}/ci/hello:v1"
    )
    assert result.rc != 0


def test_a_certificate_from_a_foreign_ca_is_refused(node, node_container, pushed, tmp_path):
    key_opts = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            *key_opts,
            "-keyout",
            tmp_path / "ca.key",
            "-out",
            tmp_path / "ca.crt",
            "-subj",
            "/CN=Foreign CA",
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "req",
            *key_opts,
            "-keyout",
            tmp_path / "client.key",
            "-out",
            tmp_path / "client.csr",
            "-subj",
            "/CN=node/OU=pusher",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            tmp_path / "client.csr",
            "-CA",
            tmp_path / "ca.crt",
            "-CAkey",
            tmp_path / "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            tmp_path / "client.cert",
        ],
        check=True,
        capture_output=True,
    )
    copy_in(
        node,
        node_container,
        [
            (tmp_path / "client.cert", "/root/probe/foreign/client.cert"),
            (tmp_path / "client.key", "/root/probe/foreign/client.key"),
        ],
    )
    node.run(f"cp {CA} /root/probe/foreign/ca.crt")
    assert http_status(node, MANIFEST_URL, "/root/probe/foreign") == "400"
    result = node.run(
        f"skopeo inspect --cert-dir /root/probe/foreign docker://{REGISTRY}/ci/hello:v1"
    )
    assert result.rc != 0


def test_tls_1_1_is_refused_and_tls_1_3_works(node):
    # SECLEVEL=0 makes the client really offer TLS 1.1: the refusal is the server's.
    old = node.run(
        "echo | openssl s_client -connect registry:443 -servername registry -tls1_1 "
        "-cipher 'DEFAULT:@SECLEVEL=0'"
    )
    assert old.rc != 0
    assert "alert protocol version" in old.stdout + old.stderr
    new = node.run(
        f"echo | openssl s_client -connect registry:443 -servername registry -tls1_3 -CAfile {CA}"
    )
    assert new.rc == 0, new.stderr
    assert "New, TLSv1.3" in new.stdout
    assert "Verify return code: 0 (ok)" in new.stdout


@pytest.mark.parametrize("port", [5000, 5001, 80])
def test_only_the_gateway_is_reachable_from_node(node, port):
    # curl exit 7: the registry host answered with a reset; nothing listens there
    # for the VLAN (Distribution and its debug listener are bound to loopback).
    assert node.run(f"curl -s -m 5 -o /dev/null http://registry:{port}/").rc == 7
    assert node.run(f"curl -s -m 5 -o /dev/null --cacert {CA} https://registry:443/").rc != 7


SOCKET = "/run/docker-registry/registry.sock"


def socket_get(host, user, path="/v2/"):
    """curl over the backend's socket as ``user``: (exit status, HTTP status)."""
    ran = host.run(
        f"runuser -u {user} -- curl -s -m 5 -o /dev/null -w '%{{http_code}}' "
        f"--unix-socket {SOCKET} http://localhost{path}"
    )
    return ran.rc, ran.stdout.strip()


def test_distribution_listens_on_its_socket_and_on_no_tcp_port(hosts):
    registry = hosts["registry"]
    # No TCP listener for the API, the standby's or the old layout's ports;
    # only the debug listener (health, metrics) stays on loopback TCP.
    listening = registry.check_output("ss -Hltn")
    ports = {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines()}
    assert not ports & {"5000", "5002"}, listening
    assert "5001" in ports
    directory = registry.file("/run/docker-registry")
    assert (directory.user, directory.group, directory.mode) == (
        "docker-registry",
        "airgap-backend",
        0o750,
    )
    sock = registry.file(SOCKET)
    assert sock.is_socket and sock.mode == 0o770 and sock.group == "airgap-backend"
    assert "airgap-backend" in registry.user("www-data").groups
    config = registry.check_output("nginx -T 2>/dev/null")
    assert f"server unix:{SOCKET} max_fails=0;" in config
    assert "127.0.0.1:5000" not in config


def test_only_root_and_nginx_reach_the_backend(hosts, pushed):
    """Another local user cannot get around the gateway: the socket's
    permissions refuse it (curl 7: could not connect), while root and
    nginx's user are answered."""
    registry = hosts["registry"]
    assert socket_get(registry, "root") == (0, "200")
    assert socket_get(registry, "www-data") == (0, "200")
    assert socket_get(registry, "root", "/v2/ci/hello/tags/list") == (0, "200")
    refused = registry.run(
        f"runuser -u nobody -- curl -sS -m 5 --unix-socket {SOCKET} -X DELETE "
        "http://localhost/v2/ci/hello/manifests/v1"
    )
    assert refused.rc == 7, refused.stderr
    assert socket_get(registry, "nobody")[0] == 7
    # The cause: the file system refuses the connection itself.
    connect = registry.run(
        "runuser -u nobody -- python3 -c 'import socket; "
        f'socket.socket(socket.AF_UNIX).connect("{SOCKET}")\''
    )
    assert connect.rc != 0 and "PermissionError" in connect.stderr, connect.stderr


def test_the_standby_socket_is_as_closed(hosts):
    standby = "/run/docker-registry-standby/registry.sock"
    registry = hosts["registry"]
    registry.check_output("systemctl start docker-registry-standby")
    try:
        probe = f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' --unix-socket {standby} "
        waited = registry.run(
            f"for i in $(seq 30); do [ $({probe} http://localhost/v2/) = 200 ] && exit 0; "
            "sleep 1; done; exit 1"
        )
        assert waited.rc == 0, f"{standby} did not answer"
        assert registry.run(f"runuser -u www-data -- {probe} http://localhost/v2/").stdout == "200"
        assert registry.run(f"runuser -u nobody -- {probe} http://localhost/v2/").rc == 7
        assert registry.file("/run/docker-registry-standby").mode == 0o750
    finally:
        registry.run("systemctl stop docker-registry-standby")


def test_nginx_serves_the_registry_through_the_socket(hosts, node, pushed):
    """A pull through the gateway works with nothing on TCP 5000: nginx
    reached Distribution over the socket."""
    registry = hosts["registry"]
    assert registry.socket("tcp://127.0.0.1:5000").is_listening is False
    assert http_status(node, MANIFEST_URL, CURL_CERTS) == "200"


def served_serial(node):
    out = node.run(
        f"echo | openssl s_client -connect {REGISTRY} -servername registry -CAfile {CA} "
        f"-cert {CERTS}/client.cert -key {CERTS}/client.key 2>/dev/null "
        "| openssl x509 -noout -serial"
    )
    assert out.rc == 0, out.stderr
    return out.stdout.strip().split("=", 1)[1]


LOAD = f"""
n=0; fail=0; : > /root/load.log
while [ ! -e /root/load.stop ] || [ $n -lt 500 ]; do
  code=$(curl -s -o /dev/null -w '%{{http_code}}' -H 'Accept: {ACCEPT}' --cacert {CA} \\
         --cert {CURL_CERTS}/client.cert --key {CURL_CERTS}/client.key {MANIFEST_URL})
  n=$((n + 1)); [ "$code" = 200 ] || fail=$((fail + 1))
  echo "$(date +%s.%N) $code" >> /root/load.log
done
echo "$n $fail" > /root/load.done
"""


def test_server_certificate_rotates_under_load_without_a_failed_request(
    node, node_container, pushed, playbook, ansible_vars
):
    before = served_serial(node)
    node.run("rm -f /root/load.stop /root/load.done")
    node.run(f"cat > /root/load.sh <<'EOF'\n{LOAD}\nEOF")
    subprocess.run(["docker", "exec", "-d", node_container, "bash", "/root/load.sh"], check=True)
    time.sleep(2)
    started = time.time()
    playbook("playbooks/rotate-certs.yml", "-e", '{"internal_ca_force_rotate": ["registry"]}')
    rotated = time.time()
    time.sleep(2)
    node.run("touch /root/load.stop")
    for _ in range(120):
        if node.run("test -e /root/load.done").rc == 0:
            break
        time.sleep(1)
    total, failed = map(int, node.check_output("cat /root/load.done").split())
    stamps = [
        float(line.split()[0]) for line in node.check_output("cat /root/load.log").splitlines()
    ]
    print(
        f"rotation under load: {total} requests, {failed} failed, "
        f"{sum(started <= s <= rotated for s in stamps)} during the playbook"
    )
    assert total >= 500
    assert failed == 0
    assert any(s < started for s in stamps) and any(s > rotated for s in stamps)
    after = served_serial(node)
    assert after != before
    issued = (
        subprocess.run(
            [
                "openssl",
                "x509",
                "-noout",
                "-serial",
                "-in",
                f"{ansible_vars['internal_ca_dir']}/servers/registry.crt",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("=", 1)[1]
    )
    assert after == issued


def test_a_revoked_certificate_is_refused(node, node_container, pushed, playbook, ansible_vars):
    clients = [*ansible_vars["internal_ca_clients"], {"name": "canary", "role": "puller"}]
    extra = json.dumps({"internal_ca_clients": clients})
    playbook("playbooks/rotate-certs.yml", "-e", extra)
    ca_dir = ansible_vars["internal_ca_dir"]
    copy_in(
        node,
        node_container,
        [
            (f"{ca_dir}/clients/canary.crt", "/root/probe/canary/client.cert"),
            (f"{ca_dir}/clients/canary.key", "/root/probe/canary/client.key"),
        ],
    )
    assert http_status(node, MANIFEST_URL, "/root/probe/canary") == "200"
    playbook("playbooks/revoke-cert.yml", "-e", extra, "-e", "identity=canary")
    assert http_status(node, MANIFEST_URL, "/root/probe/canary") == "400"
    assert http_status(node, MANIFEST_URL, CURL_CERTS) == "200"


def test_revoking_an_unknown_identity_fails_clearly(playbook):
    result = playbook(
        "playbooks/revoke-cert.yml", "-e", "identity=nobody-by-that-name", check=False
    )
    assert result.returncode != 0
    assert "nobody-by-that-name" in result.stdout + result.stderr
