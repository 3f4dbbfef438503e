"""The appliance's signing keys: ``keys.json`` and the cosign key pairs beside it.

``keys_dir/keys.json``::

    {"version": 1, "keys": [{"id": "20261130T104100Z", "state": "active|verifying|retired",
                             "created": ISO, "retire_after": ISO|null}]}

with ``cosign-<id>.key`` (encrypted with the password, 0600) and ``cosign-<id>.pub`` per key.
Exactly one key is ``active`` and signs; a rotation makes a new active key and leaves the old
one ``verifying`` until ``retire_after``, so images signed before the rotation keep verifying
on nodes that trust both public keys; :func:`retire` then retires it. The public keys to
publish are those of the active and verifying keys. Retired keys stay on disk (files and
record) so that a retirement can be looked into; they are never published nor used.

Every change writes the new key files first, then replaces ``keys.json`` atomically, under
an exclusive lock on ``keys_dir/.lock``: a crash leaves at worst unused files, never a
record naming a key that is not there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.tools import cosign
from airgapped_registry.tools.process import Tools

ACTIVE, VERIFYING, RETIRED = "active", "verifying", "retired"
STATES = (ACTIVE, VERIFYING, RETIRED)
RECORD = "keys.json"
_ID_FORMAT = "%Y%m%dT%H%M%SZ"


class SigningKeyError(AirgapError):
    """keys.json or a key file cannot be used as it is."""


@dataclass(frozen=True)
class SigningKey:
    """One key pair's record; its files are named by ``id`` in the keys directory."""

    id: str
    state: str
    created: datetime
    retire_after: datetime | None = None

    @property
    def prefix(self) -> str:
        return f"cosign-{self.id}"

    def private_key(self, keys_dir: Path) -> Path:
        return keys_dir / f"{self.prefix}.key"

    def public_key(self, keys_dir: Path) -> Path:
        return keys_dir / f"{self.prefix}.pub"

    @property
    def published(self) -> bool:
        return self.state in (ACTIVE, VERIFYING)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "created": _iso(self.created),
            "retire_after": _iso(self.retire_after) if self.retire_after else None,
        }


@dataclass(frozen=True)
class KeyRing:
    """The keys of one keys directory, as ``keys.json`` records them."""

    directory: Path
    keys: tuple[SigningKey, ...] = ()

    @property
    def record(self) -> Path:
        return self.directory / RECORD

    @property
    def active(self) -> SigningKey:
        """The key that signs; a ring without one is refused with what to run."""
        for key in self.keys:
            if key.state == ACTIVE:
                return key
        raise SigningKeyError(
            f"{self.record}: no active signing key (run: airgap signing-key init --config ...)"
        )

    @property
    def published(self) -> tuple[SigningKey, ...]:
        """The keys whose public halves nodes trust: the active one, then the verifying."""
        return tuple(sorted((k for k in self.keys if k.published), key=lambda k: k.state != ACTIVE))

    def public_keys(self) -> list[Path]:
        return [key.public_key(self.directory) for key in self.published]

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "keys": [key.to_json() for key in self.keys]}


def load(directory: str | os.PathLike[str]) -> KeyRing:
    """The ring of ``directory`` (empty when it has no keys.json yet), every record checked
    and every published key's files present."""
    directory = Path(directory)
    record = directory / RECORD
    try:
        document = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return KeyRing(directory)
    except OSError as exc:
        raise SigningKeyError(f"{record}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise SigningKeyError(f"{record}: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != 1:
        raise SigningKeyError(f"{record}: not a version 1 keys record")
    items = document.get("keys")
    if not isinstance(items, list):
        raise SigningKeyError(f"{record}: keys: not a list")
    keys = tuple(_key(item, f"{record}: keys[{n}]") for n, item in enumerate(items))
    ids = [key.id for key in keys]
    if len(set(ids)) != len(ids):
        raise SigningKeyError(f"{record}: a key id appears twice")
    active = [key.id for key in keys if key.state == ACTIVE]
    if keys and len(active) != 1:
        raise SigningKeyError(f"{record}: {len(active)} active keys, exactly one must be")
    ring = KeyRing(directory, keys)
    for key in ring.published:
        for path in (key.public_key(directory), key.private_key(directory)):
            if key.state == VERIFYING and path.suffix == ".key":
                continue  # a verifying key never signs again
            if not path.is_file():
                raise SigningKeyError(f"{record}: key {key.id} ({key.state}): {path} is missing")
    return ring


def _key(item: Any, where: str) -> SigningKey:
    if not isinstance(item, dict):
        raise SigningKeyError(f"{where}: not an object")
    key_id, state = item.get("id"), item.get("state")
    if not isinstance(key_id, str) or not _valid_id(key_id):
        raise SigningKeyError(f"{where}: id {key_id!r} is not YYYYmmddTHHMMSSZ")
    if state not in STATES:
        raise SigningKeyError(f"{where}: state {state!r} is not one of {', '.join(STATES)}")
    created = _time(item.get("created"), f"{where}: created")
    retire_after = item.get("retire_after")
    return SigningKey(
        key_id,
        state,
        created,
        _time(retire_after, f"{where}: retire_after") if retire_after is not None else None,
    )


def _valid_id(text: str) -> bool:
    try:
        datetime.strptime(text, _ID_FORMAT)
    except ValueError:
        return False
    return True


def _time(value: Any, where: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.astimezone(UTC)
    raise SigningKeyError(f"{where}: {value!r} is not an ISO time with a zone")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the keys directory's lock: one change at a time, whoever runs it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _save(ring: KeyRing) -> None:
    """Replace keys.json in one rename, its content on disk first."""
    text = json.dumps(ring.to_json(), indent=2) + "\n"
    descriptor, name = tempfile.mkstemp(prefix=".keys.", suffix=".json", dir=ring.directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, 0o644)
        os.replace(name, ring.record)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _sync_directory(ring.directory)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _new_key(
    ring: KeyRing, tools: Tools, cosign_path: str, password: str, now: datetime
) -> SigningKey:
    """A new key pair in the directory, named after ``now`` (a second later when that name
    is taken); made in a private scratch directory, then moved in with renames."""
    taken = {key.id for key in ring.keys}
    moment = now
    while moment.strftime(_ID_FORMAT) in taken:
        moment += timedelta(seconds=1)
    key = SigningKey(moment.strftime(_ID_FORMAT), ACTIVE, now)
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=ring.directory))
    try:
        private, public = cosign.generate_key_pair(
            tools, cosign_path, scratch, key.prefix, password
        )
        for made, final in (
            (public, key.public_key(ring.directory)),
            (private, key.private_key(ring.directory)),
        ):
            if final.exists():
                raise SigningKeyError(f"{final}: exists, but keys.json does not name it")
            os.chmod(made, 0o600 if made is private else 0o644)
            os.replace(made, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _sync_directory(ring.directory)
    return key


def listing(ring: KeyRing) -> dict[str, Any]:
    """What ``airgap signing-key list`` reports: every key, and the public keys to publish
    (paths and PEM text, for a play to copy to nodes)."""
    return {
        "keys_dir": str(ring.directory),
        "active": next((key.id for key in ring.keys if key.state == ACTIVE), None),
        "keys": [
            {**key.to_json(), "public_key": str(key.public_key(ring.directory))}
            for key in ring.keys
        ],
        "published": [
            {
                "id": key.id,
                "state": key.state,
                "path": str(key.public_key(ring.directory)),
                "pem": key.public_key(ring.directory).read_text(encoding="ascii"),
            }
            for key in ring.published
        ],
    }


def init(
    directory: Path,
    password: str,
    tools: Tools,
    cosign_path: str = "cosign",
    now: datetime | None = None,
) -> dict[str, Any]:
    """The first key, when the directory has none; otherwise nothing changes."""
    with _locked(directory):
        ring = load(directory)
        changed = not ring.keys
        if changed:
            key = _new_key(ring, tools, cosign_path, password, _now(now))
            ring = replace(ring, keys=(key,))
            _save(ring)
    return {"changed": changed, **listing(ring)}


def rotate(
    directory: Path,
    password: str,
    overlap: timedelta,
    tools: Tools,
    cosign_path: str = "cosign",
    now: datetime | None = None,
) -> dict[str, Any]:
    """A new active key; the previous active key verifies until ``now + overlap``."""
    if overlap < timedelta(0):
        raise SigningKeyError(f"overlap {overlap}: must not be negative")
    moment = _now(now)
    with _locked(directory):
        ring = load(directory)
        previous = ring.active
        key = _new_key(ring, tools, cosign_path, password, moment)
        kept = tuple(
            replace(k, state=VERIFYING, retire_after=moment + overlap) if k.id == previous.id else k
            for k in ring.keys
        )
        ring = replace(ring, keys=(*kept, key))
        _save(ring)
    return {"changed": True, "rotated": {"from": previous.id, "to": key.id}, **listing(ring)}


def retire(directory: Path, now: datetime | None = None, force: bool = False) -> dict[str, Any]:
    """Retire the verifying keys whose ``retire_after`` has passed (all of them: ``force``)."""
    moment = _now(now)
    with _locked(directory):
        ring = load(directory)
        retired = [
            k.id
            for k in ring.keys
            if k.state == VERIFYING
            and (force or (k.retire_after is not None and k.retire_after <= moment))
        ]
        if retired:
            ring = replace(
                ring,
                keys=tuple(replace(k, state=RETIRED) if k.id in retired else k for k in ring.keys),
            )
            _save(ring)
    return {"changed": bool(retired), "retired": retired, **listing(ring)}
