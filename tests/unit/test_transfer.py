"""The transfer key and its signature documents: made, loaded, verified, and every refusal.

Real Ed25519 keys in temporary directories; ``airgap transfer-key`` in a subprocess as an
operator runs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgapped_registry.transfer import (
    MEDIA_TYPE,
    TransferError,
    TransferSignatureError,
    TrustedKeys,
    init_key,
    load_key,
    public_path,
)
from airgapped_registry.transfer.signature import FORMAT, signed_message

LOCK = b'{"entries": [], "version": 1}\n'
WHAT = "published lock https://relay:443/airgapped-registry/mirror-lock:current"


def made_key(directory: Path, name: str = "transfer") -> Path:
    key = directory / name / "transfer.key"
    init_key(key)
    return key


def trusting(*keys: Path) -> TrustedKeys:
    return TrustedKeys.load([public_path(key) for key in keys])


def test_init_makes_a_private_0600_and_a_public_0644_pair_once(tmp_path: Path) -> None:
    key = tmp_path / "transfer" / "transfer.key"
    made = init_key(key)
    assert made["changed"] is True and made["key"] == str(key)
    assert made["public"] == str(tmp_path / "transfer" / "transfer.pub")
    assert key.stat().st_mode & 0o777 == 0o600
    assert public_path(key).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "transfer").stat().st_mode & 0o777 == 0o700
    public = serialization.load_pem_public_key(public_path(key).read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert made["key_id"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert load_key(key).key_id == made["key_id"]
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".")]

    private = key.read_bytes()
    again = init_key(key)
    assert (again["changed"], again["key_id"]) == (False, made["key_id"])
    assert key.read_bytes() == private


def test_init_writes_a_missing_or_wrong_public_half_again_never_the_key(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    private, public = key.read_bytes(), public_path(key).read_bytes()
    public_path(key).unlink()
    assert init_key(key, check=True)["changed"] is True
    assert not public_path(key).exists()
    assert init_key(key)["changed"] is True
    assert public_path(key).read_bytes() == public
    other = made_key(tmp_path, "other")
    public_path(key).write_bytes(public_path(other).read_bytes())
    assert init_key(key)["changed"] is True
    assert (key.read_bytes(), public_path(key).read_bytes()) == (private, public)


def test_init_in_check_mode_writes_nothing(tmp_path: Path) -> None:
    key = tmp_path / "transfer" / "transfer.key"
    report = init_key(key, check=True)
    assert (report["changed"], report["key_id"], report["check_mode"]) == (True, None, True)
    assert not (tmp_path / "transfer").exists()


def test_init_refuses_an_existing_key_others_can_read(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    private = key.read_bytes()
    key.chmod(0o640)
    with pytest.raises(TransferError, match=r"mode 0640 lets group or others read it"):
        init_key(key)
    assert key.read_bytes() == private


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_a_key_group_or_others_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    key = made_key(tmp_path)
    key.chmod(mode)
    with pytest.raises(TransferError) as refused:
        load_key(key)
    assert str(refused.value) == (
        f"transfer key {key}: mode {mode:04o} lets group or others read it; it must be 0600 "
        f"(chmod 600 {key})"
    )


def test_a_missing_key_is_refused_with_the_command_that_makes_it(tmp_path: Path) -> None:
    key = tmp_path / "absent.key"
    with pytest.raises(TransferError) as refused:
        load_key(key)
    assert str(refused.value) == (
        f"transfer key {key}: cannot read (No such file or directory); make it with "
        f"'airgap transfer-key init --key {key}'"
    )


def test_a_key_that_is_not_ed25519_or_not_pem_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "ec.key"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key.write_bytes(pem)
    key.chmod(0o600)
    with pytest.raises(TransferError, match=rf"^transfer key {key}: not an Ed25519 key$"):
        load_key(key)
    key.write_bytes(b"not a key")
    with pytest.raises(TransferError, match=r"not an unencrypted PEM key"):
        load_key(key)


def test_a_signed_document_verifies_and_names_its_key(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    signature = load_key(key).sign(LOCK, "lock")
    assert trusting(key).verify(LOCK, signature, purpose="lock", what=WHAT) == load_key(key).key_id
    document = json.loads(signature)
    assert document == {
        "format": FORMAT,
        "algorithm": "ed25519",
        "purpose": "lock",
        "key_id": load_key(key).key_id,
        "digest": "sha256:" + hashlib.sha256(LOCK).hexdigest(),
        "signature": document["signature"],
    }
    # Canonical: the same file, purpose and key give the same bytes.
    assert load_key(key).sign(LOCK, "lock") == signature
    assert signature == json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    assert MEDIA_TYPE == "application/vnd.airgapped-registry.transfer-signature.v1+json"


def test_the_signature_is_over_the_purpose_and_the_digest(tmp_path: Path) -> None:
    """Checked with the key itself, outside the engine: the documented message."""
    key = made_key(tmp_path)
    document = json.loads(load_key(key).sign(LOCK, "bundle"))
    public = serialization.load_pem_public_key(public_path(key).read_bytes())
    message = (
        b"airgapped-registry transfer-signature v1\nbundle\nsha256:"
        + hashlib.sha256(LOCK).hexdigest().encode()
    )
    assert signed_message("bundle", document["digest"]) == message
    public.verify(base64.b64decode(document["signature"]), message)  # raises if not


def test_an_unsigned_document_is_refused(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    with pytest.raises(TransferSignatureError) as refused:
        trusting(key).verify(LOCK, None, purpose="lock", what=WHAT)
    assert str(refused.value) == f"{WHAT}: not signed (no transfer signature)"


def test_a_document_signed_by_another_key_is_refused_naming_both(tmp_path: Path) -> None:
    key, other = made_key(tmp_path), made_key(tmp_path, "other")
    signature = load_key(other).sign(LOCK, "lock")
    with pytest.raises(TransferSignatureError) as refused:
        trusting(key).verify(LOCK, signature, purpose="lock", what=WHAT)
    assert str(refused.value) == (
        f"{WHAT}: signed by untrusted key {load_key(other).key_id} "
        f"(trusted: {load_key(key).key_id} ({public_path(key)}))"
    )
    # Trusting both (the rotation's overlap) accepts either.
    both = trusting(key, other)
    assert both.verify(LOCK, signature, purpose="lock", what=WHAT) == load_key(other).key_id
    assert both.key_ids == sorted([load_key(key).key_id, load_key(other).key_id])


def test_a_document_edited_after_signing_is_refused(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    signature = load_key(key).sign(LOCK, "lock")
    edited = LOCK.replace(b"[]", b"[ ]")
    with pytest.raises(TransferSignatureError) as refused:
        trusting(key).verify(edited, signature, purpose="lock", what=WHAT)
    assert str(refused.value) == (
        f"{WHAT}: digest mismatch, signed sha256:{hashlib.sha256(LOCK).hexdigest()} but it is "
        f"sha256:{hashlib.sha256(edited).hexdigest()} (edited after signing)"
    )


def test_an_edited_digest_or_purpose_in_the_document_is_refused(tmp_path: Path) -> None:
    """Whoever edits the file and the document's digest to match, or relabels an inventory's
    signature as a lock's, still lacks the key."""
    key = made_key(tmp_path)
    edited = LOCK.replace(b"[]", b"[ ]")
    document = json.loads(load_key(key).sign(LOCK, "lock"))
    document["digest"] = "sha256:" + hashlib.sha256(edited).hexdigest()
    with pytest.raises(TransferSignatureError, match=r": signature invalid \(does not verify"):
        trusting(key).verify(edited, json.dumps(document).encode(), purpose="lock", what=WHAT)
    relabelled = json.loads(load_key(key).sign(LOCK, "inventory"))
    relabelled["purpose"] = "lock"
    with pytest.raises(TransferSignatureError, match=r": signature invalid \(does not verify"):
        trusting(key).verify(LOCK, json.dumps(relabelled).encode(), purpose="lock", what=WHAT)


def test_a_signature_for_another_purpose_is_refused(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    signature = load_key(key).sign(LOCK, "inventory")
    with pytest.raises(TransferSignatureError) as refused:
        trusting(key).verify(LOCK, signature, purpose="lock", what=WHAT)
    assert str(refused.value) == f"{WHAT}: signature is for purpose 'inventory', not 'lock'"


def test_an_unknown_purpose_is_refused_when_signing_and_verifying(tmp_path: Path) -> None:
    key = made_key(tmp_path)
    with pytest.raises(TransferError, match=r"purpose 'locks': not one of lock, inventory, bundle"):
        load_key(key).sign(LOCK, "locks")
    with pytest.raises(TransferError, match=r"purpose 'x': not one of"):
        trusting(key).verify(LOCK, b"{}", purpose="x", what=WHAT)


def _document(tmp_path: Path, **changes: object) -> bytes:
    document = json.loads(load_key(made_key(tmp_path, "doc")).sign(LOCK, "lock"))
    for name, value in changes.items():
        if value is None:
            del document[name]
        else:
            document[name] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda tmp: b"not json", "not JSON"),
        (lambda tmp: b"\xff\xfe", "not JSON"),
        (lambda tmp: b"[1, 2]", "not a JSON object"),
        (lambda tmp: b" " * (64 * 1024 + 1), "65537 bytes, at most 65536 expected"),
        (
            lambda tmp: _document(tmp, format="cosign"),
            "format 'cosign', expected 'airgapped-registry.transfer-signature.v1'",
        ),
        (lambda tmp: _document(tmp, key_id=None), "no string key_id"),
        (lambda tmp: _document(tmp, digest=7, purpose=None), "no string digest, purpose"),
        (lambda tmp: _document(tmp, algorithm="rsa"), "algorithm 'rsa', expected 'ed25519'"),
        (lambda tmp: _document(tmp, signature="%%%"), "signature is not base64"),
    ],
)
def test_a_malformed_signature_document_is_refused(tmp_path: Path, make, cause: str) -> None:
    key = made_key(tmp_path)
    with pytest.raises(TransferSignatureError) as refused:
        trusting(key).verify(LOCK, make(tmp_path), purpose="lock", what=WHAT)
    assert str(refused.value) == f"{WHAT}: not a transfer signature document ({cause})"


def test_trusted_keys_from_directories_and_files(tmp_path: Path) -> None:
    first, second, third = (made_key(tmp_path, name) for name in ("a", "b", "c"))
    trusted_dir = tmp_path / "trusted"
    trusted_dir.mkdir()
    (trusted_dir / "relay.pub").write_bytes(public_path(first).read_bytes())
    (trusted_dir / "relay-2.pub").write_bytes(public_path(second).read_bytes())
    (trusted_dir / "README").write_text("not a key, not read")
    (trusted_dir / "same-again.pub").write_bytes(public_path(first).read_bytes())
    trusted = TrustedKeys.load([trusted_dir, public_path(third)])
    assert trusted.key_ids == sorted(load_key(key).key_id for key in (first, second, third))


def test_a_missing_trusted_directory_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "trusted"
    with pytest.raises(TransferError) as refused:
        TrustedKeys.load([missing])
    assert str(refused.value).startswith(
        f"trusted transfer keys {missing}: no such file or directory"
    )


def test_no_trusted_key_at_all_is_refused_naming_the_paths(tmp_path: Path) -> None:
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "key.txt").write_text("not a .pub")
    with pytest.raises(TransferError) as refused:
        TrustedKeys.load([empty, other])
    assert str(refused.value) == f"trusted transfer keys {empty}, {other}: no *.pub key found"
    with pytest.raises(TransferError, match=r"\(no path given\): no \*\.pub key found"):
        TrustedKeys.load([])


def test_a_bad_file_in_the_trusted_directory_is_refused_naming_it(tmp_path: Path) -> None:
    trusted_dir = tmp_path / "trusted"
    trusted_dir.mkdir()
    (trusted_dir / "good.pub").write_bytes(public_path(made_key(tmp_path)).read_bytes())
    bad = trusted_dir / "bad.pub"
    bad.write_text("garbage")
    with pytest.raises(TransferError, match=rf"^transfer public key {bad}: not a PEM public key"):
        TrustedKeys.load([trusted_dir])
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    bad.write_bytes(
        ec_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(TransferError, match=rf"^transfer public key {bad}: not an Ed25519 key$"):
        TrustedKeys.load([trusted_dir])


def test_a_raw_ed25519_key_signature_from_outside_the_engine_verifies(tmp_path: Path) -> None:
    """The format is the contract, not the engine's code: a document made by hand from the
    documented fields and message verifies."""
    private = Ed25519PrivateKey.generate()
    public_file = tmp_path / "outside.pub"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    digest = "sha256:" + hashlib.sha256(LOCK).hexdigest()
    message = b"airgapped-registry transfer-signature v1\ninventory\n" + digest.encode()
    document = {
        "format": FORMAT,
        "algorithm": "ed25519",
        "purpose": "inventory",
        "key_id": key_id,
        "digest": digest,
        "signature": base64.b64encode(private.sign(message)).decode(),
    }
    trusted = TrustedKeys.load([public_file])
    signed = json.dumps(document, indent=2).encode()
    assert trusted.verify(LOCK, signed, purpose="inventory", what="inventory") == key_id


def airgap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airgapped_registry.cli", "transfer-key", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_transfer_key_init_and_show_from_the_command_line(tmp_path: Path) -> None:
    key = tmp_path / "transfer" / "transfer.key"
    planned = airgap("init", "--key", key, "--check")
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["changed"] is True and not key.exists()
    made = airgap("init", "--key", key)
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["changed"] is True and key.stat().st_mode & 0o777 == 0o600
    again = json.loads(airgap("init", "--key", key).stdout)
    assert (again["changed"], again["key_id"]) == (False, report["key_id"])
    shown = airgap("show", "--key", key)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "key": str(key),
        "key_id": report["key_id"],
        "public": str(key.with_suffix(".pub")),
        "public_present": True,
    }
    key.chmod(0o644)
    refused = airgap("show", "--key", key)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"airgap: transfer key {key}: mode 0644 lets group or others read it; it must be 0600 "
        f"(chmod 600 {key})\n"
    )
