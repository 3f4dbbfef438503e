"""``airgap bundle import`` against real Distribution registries on loopback.

One relay is made for the module: the sample upstream, the lab list locked against it, synced
into a relay registry, exported as a signed full bundle. Each test imports a copy of that
bundle (damaged in one way, for the refusals) into a fresh empty registry, and looks at what
the registry holds and what its access log says was sent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from faultproxy import DROP, FaultProxy, Rule, upload_bytes
from gatelab import COSIGN, GateLab, free_port
from mirror_lists import MOVED, SMALL, TRIVY, lab_list

from airgap_lab.sample import SampleSpec, build, push
from airgapped_registry.bundle.export import export
from airgapped_registry.bundle.format import MANIFEST, SIGNATURE, open_bundle
from airgapped_registry.bundle.inventory import read_inventory, write_inventory
from airgapped_registry.cli import main
from airgapped_registry.cli.sign import lock_targets
from airgapped_registry.mirror.lock import read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.service import operations
from airgapped_registry.signing import keys
from airgapped_registry.transfer import TrustedKeys, init_key, load_key
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "airgapped_registry.cli"]
# Base layers big enough to go in several chunks of CHUNK bytes.
SPEC = SampleSpec(**{**vars(SMALL), "base_layer_bytes": 96 * 1024})
CHUNK = 8 * 1024


@dataclass
class Relay:
    upstream: object
    registry: object
    directory: Path
    lock_path: Path
    spec_path: Path
    key_path: Path
    trusted: Path
    bundle: Path

    def needed_blobs(self, bundle: Path | None = None) -> dict[str, int]:
        """Every blob (not manifest) the bundle's entries need, with its size."""
        opened = open_bundle([bundle or self.bundle], TrustedKeys.load([self.trusted]))
        manifests = {
            m["digest"] for entry in opened.contents["entries"] for m in entry["manifests"]
        }
        return {
            b["digest"]: b["size"]
            for entry in opened.contents["entries"]
            for b in entry["blobs"]
            if b["digest"] not in manifests
        }


@pytest.fixture(scope="module")
def relay(distribution_factory, tmp_path_factory) -> Relay:
    directory = tmp_path_factory.mktemp("relay")
    upstream = distribution_factory()
    push(build(SPEC), RegistryClient(upstream.url))
    spec_path = lab_list(directory, upstream.address)
    lock_path = directory / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    assert locked is not None
    registry = distribution_factory()
    report = sync(locked, Destination(registry.url), load(spec_path), options=SyncOptions())
    assert report["failed"] == 0
    keys = directory / "keys"
    keys.mkdir()
    init_key(keys / "transfer.key")
    trusted = keys / "transfer.pub"
    bundle = directory / "bundle"
    export(
        lock_path,
        RegistryClient(registry.url),
        bundle,
        load_key(keys / "transfer.key"),
        spec=load(spec_path),
    )
    return Relay(
        upstream, registry, directory, lock_path, spec_path, keys / "transfer.key", trusted, bundle
    )


def import_argv(
    relay: Relay, bundle: Path | list[Path], target, state: Path, *extra: str
) -> list[str]:
    paths = bundle if isinstance(bundle, list) else [bundle]
    return [
        "bundle",
        "import",
        *map(str, paths),
        "--registry",
        target.url,
        "--trusted-keys",
        str(relay.trusted),
        "--state",
        str(state),
        "--chunk-size",
        str(CHUNK),
        *extra,
    ]


def run_import(relay: Relay, bundle: Path, target, state: Path, capsys, *extra: str):
    status = main(import_argv(relay, bundle, target, state, *extra))
    captured = capsys.readouterr()
    return status, captured


def pushes(target) -> list[str]:
    """The access log's lines of requests that write (nothing else changes a registry)."""
    return [
        line
        for line in target.log().splitlines()
        if any(f'"{method} ' in line for method in ("PUT", "POST", "PATCH", "DELETE"))
    ]


def stored_blobs(target) -> set[str]:
    root = target.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{path.parent.name}" for path in root.glob("*/*/data")}


def test_a_full_bundle_seeds_an_empty_registry_and_verify_passes(
    relay, distribution, tmp_path, capsys
) -> None:
    state = tmp_path / "state.db"
    needed = relay.needed_blobs()
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys, "--check")
    assert status == 0, captured.err
    planned = json.loads(captured.out)
    assert planned["check_mode"] is True
    assert planned["bytes_to_send"] >= sum(needed.values())  # manifests are blobs there too
    assert pushes(distribution) == []

    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["status"] == "ok"
    assert report["verify"]["failed"] == 0
    # Each blob's bytes sent once, whatever the number of repositories needing it.
    assert report["bytes_sent"] == sum(needed.values())
    assert report["blobs_uploaded"] == len(needed)
    assert report["blobs_mounted"] > 0
    locked = read_lock(relay.lock_path)
    assert verify(locked, RegistryClient(distribution.url), deep=True)["failed"] == 0

    # Idempotent: the same bundle again sends nothing and writes nothing.
    before = len(pushes(distribution))
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    again = json.loads(captured.out)
    assert (again["bytes_sent"], again["blobs_uploaded"], again["manifests"], again["tags"]) == (
        0,
        0,
        0,
        0,
    )
    assert len(pushes(distribution)) == before

    assert main(["bundle", "status", "--state", str(state)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in shown["imports"]] == ["ok", "ok"]
    assert shown["imports"][1]["bytes_sent"] == sum(needed.values())
    assert shown["imports"][0]["bytes_sent"] == 0
    assert shown["open_uploads"] == []


def _flip_a_byte(bundle: Path, relay: Relay) -> str:
    digest = max(relay.needed_blobs(), key=lambda d: relay.needed_blobs()[d])
    path = bundle / "blobs" / "sha256" / digest.removeprefix("sha256:")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return f"{path}: sha256 "


def _remove_a_file(bundle: Path, relay: Relay) -> str:
    digest = min(relay.needed_blobs())
    path = bundle / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.unlink()
    return f"{path}: missing"


def _edit_the_lock(bundle: Path, relay: Relay) -> str:
    path = bundle / "airgap" / "lock.json.gz"
    text = gzip.decompress(path.read_bytes()).replace(b'"1.0.0"', b'"1.0.1"', 1)
    path.write_bytes(gzip.compress(text, 9, mtime=0))
    return f"{path}: "


def _resigned_listing(bundle: Path, relay: Relay, path: str, data: bytes) -> None:
    """``path`` replaced by ``data``, listed and signed with the trusted key itself."""
    (bundle / path).write_bytes(data)
    document = json.loads((bundle / MANIFEST).read_bytes())
    for item in document["files"]:
        if item["path"] == path:
            item["size"], item["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    signed = json.dumps(document).encode()
    (bundle / MANIFEST).write_bytes(signed)
    (bundle / SIGNATURE).write_bytes(load_key(relay.key_path).sign(signed, "bundle"))


def _another_lock_signed(bundle: Path, relay: Relay) -> str:
    """A lock other than lock_digest names, listed and signed correctly."""
    path = "airgap/lock.json.gz"
    text = gzip.decompress((bundle / path).read_bytes()).replace(b'"1.0.0"', b'"1.0.1"', 1)
    _resigned_listing(bundle, relay, path, gzip.compress(text, 9, mtime=0))
    return f"{bundle / path}: decompresses to sha256:"


def _corrupt_gzip_signed(bundle: Path, relay: Relay) -> str:
    path = "airgap/contents.json.gz"
    data = bytearray((bundle / path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _resigned_listing(bundle, relay, path, bytes(data))
    return f"{bundle / path}: "


def _edit_the_manifest(bundle: Path, relay: Relay) -> str:
    path = bundle / MANIFEST
    document = json.loads(path.read_bytes())
    document["created"] = "2000-01-01T00:00:00Z"
    path.write_text(json.dumps(document))
    return f"{path}"


def _sign_with_another_key(bundle: Path, relay: Relay) -> str:
    other = relay.directory / "other" / "transfer.key"
    if not other.exists():
        other.parent.mkdir()
        init_key(other)
    key = load_key(other)
    (bundle / SIGNATURE).write_bytes(key.sign((bundle / MANIFEST).read_bytes(), "bundle"))
    return f"untrusted key {key.key_id}"


def _escape_the_bundle(bundle: Path, relay: Relay) -> str:
    """A file manifest naming ``../outside``, signed with the trusted key itself."""
    (bundle.parent / "outside").write_bytes(b"x")
    path = bundle / MANIFEST
    document = json.loads(path.read_bytes())
    document["files"].append(
        {"path": "../outside", "size": 1, "sha256": "0" * 64, "volume": 1, "part": None}
    )
    data = json.dumps(document).encode()
    path.write_bytes(data)
    (bundle / SIGNATURE).write_bytes(load_key(relay.key_path).sign(data, "bundle"))
    return "../outside"


def _link_a_file(bundle: Path, relay: Relay) -> str:
    digest = min(relay.needed_blobs())
    path = bundle / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.unlink()
    path.symlink_to("/etc/passwd")
    return f"{path}"


@pytest.mark.parametrize(
    "damage",
    [
        _flip_a_byte,
        _remove_a_file,
        _edit_the_lock,
        _another_lock_signed,
        _corrupt_gzip_signed,
        _edit_the_manifest,
        _sign_with_another_key,
        _escape_the_bundle,
        _link_a_file,
    ],
)
def test_a_damaged_bundle_is_refused_before_anything_is_pushed(
    relay, distribution, tmp_path, capsys, damage
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(relay.bundle, bundle, symlinks=True)
    named = damage(bundle, relay)
    status, captured = run_import(relay, bundle, distribution, tmp_path / "state.db", capsys)
    assert status == 1
    assert captured.err.startswith("airgap: ")
    assert named in captured.err
    assert pushes(distribution) == []
    assert RegistryClient(distribution.url).catalog() == []


def test_an_incomplete_delta_is_refused_naming_entry_and_digest(
    relay, distribution, tmp_path, capsys
) -> None:
    """A delta made for a site holding everything, imported into an empty registry."""
    inventory = tmp_path / "inventory.json"
    write_inventory(RegistryClient(relay.registry.url), inventory, load_key(relay.key_path))
    delta = tmp_path / "delta"
    export(
        relay.lock_path,
        RegistryClient(relay.registry.url),
        delta,
        load_key(relay.key_path),
        spec=load(relay.spec_path),
        inventory=read_inventory(inventory, TrustedKeys.load([relay.trusted])),
    )
    status, captured = run_import(relay, delta, distribution, tmp_path / "state.db", capsys)
    assert status == 1
    opened = open_bundle([delta], TrustedKeys.load([relay.trusted]))
    first = opened.contents["entries"][0]
    assert captured.err.startswith(
        f"airgap: bundle sha256:{_sha256(delta / MANIFEST)} is incomplete for "
        f"{distribution.address}: neither the bundle nor the registry holds "
        f"{first['destination']}:{first['tag']}: blob {first['blobs'][0]['digest']} "
        f"({first['blobs'][0]['size']} bytes); "
    )
    assert captured.err.endswith("; nothing was pushed\n")
    assert pushes(distribution) == []
    refused = json.loads(captured.out)  # the report, every missing digest listed
    assert (refused["status"], refused["bytes_sent"]) == ("refused", 0)
    entries = opened.contents["entries"]
    assert len(refused["missing"]) == sum(len(e["blobs"]) + len(e["manifests"]) for e in entries)
    [record] = json.loads(_status(tmp_path / "state.db", capsys))["imports"]
    assert (record["status"], record["kind"], record["bytes_sent"]) == ("refused", "delta", 0)
    assert record["error"] == captured.err.removeprefix("airgap: ").rstrip("\n")


def test_a_killed_import_resumes_and_sends_only_what_was_missing(
    relay, distribution, tmp_path, capsys
) -> None:
    state = tmp_path / "state.db"
    argv = import_argv(relay, relay.bundle, distribution, state, "--workers", "1")
    process = subprocess.Popen([*CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    needed = relay.needed_blobs()
    total = sum(needed.values())
    # Killed once a few blobs arrived and a base layer's upload is midway (chunks recorded).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        arrived = stored_blobs(distribution) & set(needed)
        if len(arrived) >= 3 and _open_sessions(state) >= 3 * CHUNK:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the import ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)  # a request the registry had whole when the client died completes
    arrived = stored_blobs(distribution) & set(needed)
    arrived_bytes = sum(needed[d] for d in arrived)
    partial = upload_bytes(distribution.storage)
    assert 0 < arrived_bytes < total

    log_before = len(distribution.log().splitlines())
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    resumed = sum(r["offset"] for r in report["resumed"])
    # Nothing that arrived is sent again: whole blobs are skipped, a session cut between
    # chunks goes on at the registry's offset. (Distribution 2.8 discards a session whose
    # last chunk was cut midway: those bytes never counted as arrived.)
    assert report["bytes_sent"] == total - arrived_bytes - resumed
    assert report["verify"]["failed"] == 0
    log = distribution.log().splitlines()[log_before:]
    completed = [line for line in log if '"PUT ' in line and "/blobs/uploads/" in line]
    assert len(completed) == len(set(needed) - arrived)
    shown = main(["bundle", "status", "--state", str(state)])
    assert shown == 0
    imports = json.loads(capsys.readouterr().out)["imports"]
    assert [r["status"] for r in imports] == ["ok", "running"]  # the killed one never finished
    with capsys.disabled():
        print(
            f"resume: total {total} bytes in {len(needed)} blobs; before the kill {len(arrived)} "
            f"blobs ({arrived_bytes} bytes) complete, {partial} bytes in open sessions; rerun sent "
            f"{report['bytes_sent']} bytes, resumed {resumed} bytes of {len(report['resumed'])} "
            f"sessions, restarted {report['restarted']}; rerun requests {report['requests']}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_sessions(state: Path) -> int:
    """The furthest offset an open upload session of the ledger reached."""
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            found = db.execute("SELECT max(offset) FROM bundle_upload_sessions").fetchone()[0]
            return int(found or 0)
    except sqlite3.Error:
        return 0


def test_a_delta_brings_the_registry_to_the_new_lock(
    relay, distribution_factory, distribution, tmp_path, capsys
) -> None:
    state = tmp_path / "state.db"
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    # The site's signed inventory, then the upstream's base layers rebuilt and locked again.
    inventory = tmp_path / "inventory.json"
    write_inventory(RegistryClient(distribution.url), inventory, load_key(relay.key_path))
    upstream = distribution_factory()
    push(
        build(SampleSpec(**{**vars(SPEC), "base_generation": MOVED.base_generation})),
        RegistryClient(upstream.url),
    )
    spec_path = lab_list(tmp_path, upstream.address)
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    relay_registry = distribution_factory()
    assert sync(locked, Destination(relay_registry.url), load(spec_path))["failed"] == 0
    delta = tmp_path / "delta"
    exported = export(
        lock_path,
        RegistryClient(relay_registry.url),
        delta,
        load_key(relay.key_path),
        spec=load(spec_path),
        inventory=read_inventory(inventory, TrustedKeys.load([relay.trusted])),
    )
    assert exported["kind"] == "delta"
    log_before = len(distribution.log().splitlines())
    lock_output = tmp_path / "relay.lock"
    status, captured = run_import(
        relay,
        delta,
        distribution,
        state,
        capsys,
        "--lock-output",
        str(lock_output),
        "--source-registry",
        "relay:5000",
    )
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["kind"] == "delta"
    assert verify(locked, RegistryClient(distribution.url), deep=True)["failed"] == 0
    # Only the delta's blobs were sent: what the site held was found there (HEAD, mount).
    delta_blobs = {
        d: s
        for d, s in relay.needed_blobs(delta).items()
        if open_bundle([delta], TrustedKeys.load([relay.trusted])).has(d)
    }
    assert report["bytes_sent"] == sum(delta_blobs.values())
    uploads = [
        line
        for line in distribution.log().splitlines()[log_before:]
        if '"PUT ' in line and "/blobs/uploads/" in line
    ]
    assert len(uploads) == len(delta_blobs)
    written = read_lock(lock_output)
    assert written is not None
    assert {e.digest for e in written.entries} == {e.digest for e in locked.entries}
    assert {e.source for e in written.entries} == {"relay"}
    assert {e.registry for e in written.entries} == {"relay:5000"}
    assert os.stat(lock_output).st_size > 0


def test_an_upload_cut_between_chunks_goes_on_at_the_registry_offset(
    relay, distribution, tmp_path, capsys
) -> None:
    """The link drops the fourth chunk of the first big blob before Distribution sees it:
    the rerun asks the registry where the session stands and sends only the rest."""
    state = tmp_path / "state.db"
    needed = relay.needed_blobs()
    total = sum(needed.values())
    with FaultProxy(distribution.url) as proxy:
        proxy.add(Rule("PATCH", "/blobs/uploads/", action=DROP, after=3))
        status, captured = run_import(relay, relay.bundle, proxy, state, capsys, "--workers", "1")
        assert status == 1
        assert "PATCH" in captured.err
        assert json.loads(captured.out)["blobs_uploaded"] > 0  # what it did, then the error
        assert pushes(distribution)  # some blobs went before the cut
        [session] = json.loads(_status(state, capsys))["open_uploads"]
        assert session["offset"] == 3 * CHUNK
        arrived = stored_blobs(distribution) & set(needed)
        proxy.clear()
        status, captured = run_import(relay, relay.bundle, proxy, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["resumed"] == [
        {"repository": session["repository"], "digest": session["digest"], "offset": 3 * CHUNK}
    ]
    assert report["restarted"] == []
    assert report["bytes_sent"] == total - sum(needed[d] for d in arrived) - 3 * CHUNK
    assert report["verify"]["failed"] == 0
    assert json.loads(_status(state, capsys))["open_uploads"] == []
    with capsys.disabled():
        print(
            f"\ncut: total {total} bytes in {len(needed)} blobs; before the cut {len(arrived)} "
            f"blobs complete, one session at {3 * CHUNK}; rerun sent {report['bytes_sent']} "
            f"bytes, requests {report['requests']}"
        )


def _status(state: Path, capsys) -> str:
    assert main(["bundle", "status", "--state", str(state)]) == 0
    return capsys.readouterr().out


def test_an_import_through_the_gateway_signs_before_tags_and_runs_the_nightly_steps(
    relay, tmp_path, capsys
) -> None:
    """The registry host's import: through nginx with the real gateway template and the
    gate, as the sync identity; ``--sign-config`` signs each entry's digest before its tag,
    then installs the bundle's vulnerability DB, signs every digest of the lock and queues
    what the scanner has not judged (the nightly job's steps after a sync)."""
    with GateLab(tmp_path / "lab") as lab:
        relay_lock_path = tmp_path / "relay.lock"
        config = yaml.safe_load(lab.provenance.read_text())
        port = free_port()
        config["scanning"].update(
            trivy=str(TRIVY),
            listen=f"127.0.0.1:{port}",
            workers=2,
            reconcile_interval="1h",
            attest=False,
            policy={"default": {"fail_on": "HIGH"}},
        )
        config["scanning"]["db"]["lock"] = str(relay_lock_path)
        lab.provenance.write_text(yaml.safe_dump(config))
        service = subprocess.Popen(
            [*CLI, "scan", "serve", "--config", str(lab.provenance), "--cosign", str(COSIGN)],
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "serve.log").open("w"),
            text=True,
        )
        sync_identity = lab.clients["sync"]
        argv = [
            "bundle", "import", str(relay.bundle),
            "--registry", f"https://{lab.address}",
            "--ca-file", str(lab.pki / "ca.pem"),
            "--cert-file", str(sync_identity.cert),
            "--key-file", str(sync_identity.key),
            "--trusted-keys", str(relay.trusted),
            "--state", str(lab.state),
            "--sign-config", str(lab.provenance),
            "--cosign", str(COSIGN),
            "--scan-wait", "300",
            "--lock-output", str(relay_lock_path),
            "--source-registry", "relay:5000",
        ]  # fmt: skip
        try:
            assert main(argv) == 0, capsys.readouterr().err
        finally:
            service.send_signal(signal.SIGTERM)
            service.communicate(timeout=60)
        report = json.loads(capsys.readouterr().out)
        locked = read_lock(relay.lock_path)
        assert report["verify"] == {
            "entries": len(locked.entries), "ok": len(locked.entries), "failed": 0, "problems": []
        }  # fmt: skip
        after = report["after"]
        db_entry = next(e for e in locked.entries if e.destination == "aquasecurity/trivy-db")
        assert after["scan_db"]["digest"] == db_entry.digest
        # Each entry's digest was signed before its tag moved; sign --lock signed the rest.
        targets = lock_targets(locked)
        assert after["sign"]["failed"] == 0
        assert after["sign"]["signed"] + after["sign"]["skipped"] == len(targets)
        assert after["sign"]["skipped"] >= len(locked.entries)
        public = keys.load(lab.keys_dir).active.public_key(lab.keys_dir)
        for repository, digest in targets[:3]:
            checked = subprocess.run(
                [
                    str(COSIGN), "verify", "--key", str(public), "--insecure-ignore-tlog",
                    "--registry-cacert", str(lab.pki / "ca.pem"),
                    "--registry-client-cert", str(lab.clients["admin"].cert),
                    "--registry-client-key", str(lab.clients["admin"].key),
                    f"{lab.address}/{repository}@{digest}",
                ],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
        # Every served digest was judged by the scan service before the end. Who queued
        # it is a race: the service's own reconciliation at start-up may find the first
        # pushes before the import's pass does, so the pass's count is not asserted.
        assert "queued" in after["scan"]["reconcile"]
        assert after["scan"]["queue"] == 0
        status = operations.status(lab.provenance)
        judged = {(v["repository"], v["digest"]): v["status"] for v in status["verdicts"]}
        for entry in locked.entries:
            assert (entry.destination, entry.digest) in judged, entry.reference
        vulnerable = next(e for e in locked.entries if e.destination == "sample/vulnerable")
        assert judged[(vulnerable.destination, vulnerable.digest)] == "fail"


def test_sigterm_stops_the_import_after_the_current_chunk_and_the_rerun_goes_on(
    relay, distribution, tmp_path, capsys
) -> None:
    state = tmp_path / "state.db"
    argv = import_argv(relay, relay.bundle, distribution, state, "--workers", "2")
    process = subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if _open_sessions(state) >= 2 * CHUNK:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the import ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.decode().endswith("airgap: interrupted\n")
    shown = json.loads(_status(state, capsys))
    assert [r["status"] for r in shown["imports"]] == ["interrupted"]
    assert shown["imports"][0]["finished_at"] is not None
    # A blob midway keeps its session (unless its last chunks went before the workers saw
    # the stop: then it is complete and none is left).
    sessions = shown["open_uploads"]
    arrived = stored_blobs(distribution) & set(relay.needed_blobs())
    assert arrived
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    # The interrupt fell between chunks: every recorded session goes on where it stopped.
    assert {(r["digest"], r["offset"]) for r in report["resumed"]} == {
        (s["digest"], s["offset"]) for s in sessions
    }
    assert report["restarted"] == []
    needed = relay.needed_blobs()
    resumed = sum(s["offset"] for s in sessions)
    assert report["bytes_sent"] == sum(needed.values()) - sum(needed[d] for d in arrived) - resumed
    assert report["verify"]["failed"] == 0


def test_a_bundle_in_volumes_imports_from_every_volume_and_not_from_some(
    relay, distribution, tmp_path, capsys
) -> None:
    drive = tmp_path / "drive"
    exported = export(
        relay.lock_path,
        RegistryClient(relay.registry.url),
        drive,
        load_key(relay.key_path),
        spec=load(relay.spec_path),
        volume_size=256 * 1024,
    )
    volumes = sorted(drive.iterdir())
    assert len(volumes) == exported["volumes"] >= 3
    assert list(drive.rglob("*.part-0001")), "a blob split across volumes"
    state = tmp_path / "state.db"
    status, captured = run_import(relay, [volumes[0], *volumes[2:]], distribution, state, capsys)
    assert status == 1
    assert f": volume 2 of {len(volumes)} missing (give every vol-001.." in captured.err
    assert pushes(distribution) == []

    status, captured = run_import(relay, volumes, distribution, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["bytes_sent"] == sum(relay.needed_blobs().values())
    assert (
        verify(read_lock(relay.lock_path), RegistryClient(distribution.url), deep=True)["failed"]
        == 0
    )


def test_a_delta_for_a_new_repository_mounts_and_copies_what_the_site_holds_elsewhere(
    relay, distribution_factory, distribution, tmp_path, capsys
) -> None:
    """The lock gains a second destination for sample/app-001's tags: the site holds every
    digest already (under sample/app-001), so the delta carries none of them and the import
    mounts the blobs and copies the manifests across repositories."""
    state = tmp_path / "state.db"
    status, captured = run_import(relay, relay.bundle, distribution, state, capsys)
    assert status == 0, captured.err
    inventory = tmp_path / "inventory.json"
    write_inventory(RegistryClient(distribution.url), inventory, load_key(relay.key_path))
    copy = (
        "  - source: upstream\n    repository: sample/app-001\n    destination: copies/app-001\n"
        "    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'\n    max_tags: 2\ncharts:\n"
    )
    spec_path = lab_list(tmp_path, relay.upstream.address, **{"charts:\n": copy})
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    relay_registry = distribution_factory()
    assert sync(locked, Destination(relay_registry.url), load(spec_path))["failed"] == 0
    delta = tmp_path / "delta"
    export(
        lock_path,
        RegistryClient(relay_registry.url),
        delta,
        load_key(relay.key_path),
        inventory=read_inventory(inventory, TrustedKeys.load([relay.trusted])),
    )
    opened = open_bundle([delta], TrustedKeys.load([relay.trusted]))
    copies = [e for e in opened.contents["entries"] if e["destination"] == "copies/app-001"]
    assert len(copies) == 2
    assert not any(opened.has(b["digest"]) for e in copies for b in e["blobs"])
    assert not any(opened.has(m["digest"]) for e in copies for m in e["manifests"])

    log_before = len(distribution.log().splitlines())
    status, captured = run_import(relay, delta, distribution, state, capsys)
    assert status == 0, captured.err
    report = json.loads(captured.out)
    assert report["bytes_sent"] == 0
    assert report["blobs_uploaded"] == 0
    assert report["blobs_mounted"] == len({b["digest"] for e in copies for b in e["blobs"]})
    assert report["tags"] == 2
    # Read from sample/app-001, put into copies/app-001 (a manifest cannot be mounted).
    assert report["manifests"] == len({m["digest"] for e in copies for m in e["manifests"]})
    mounts = [
        line
        for line in distribution.log().splitlines()[log_before:]
        if '"POST /v2/copies/app-001/blobs/uploads/?mount=' in line
        and '&from=sample%2Fapp-001 HTTP/1.1" 201 ' in line
    ]
    assert len(mounts) == report["blobs_mounted"]
    assert verify(locked, RegistryClient(distribution.url), deep=True)["failed"] == 0
