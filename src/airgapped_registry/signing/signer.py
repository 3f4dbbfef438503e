"""Signing, attesting and verifying digests through the gateway with the appliance's keys.

:class:`Signer` signs one manifest per ``cosign sign`` run (an index, then each of its
children, so a pull by a child's digest verifies too), through the gateway named by
``signing.registry`` with the appliance's client identity, ``--tlog-upload=false``. cosign
appends its layer to the digest's ``sha256-<hex>.sig`` manifest, so the signatures there
already (upstream's, copied by the mirror) are kept.

Before signing, the signer looks: one ``GET`` of the ``.sig`` manifest, then the payload blob
of each simple-signing layer (a few hundred bytes), whose signature is checked against the
active public key here, with the payload naming this digest in this repository under
``signing.registry``. A digest that passes is skipped: no cosign run, no upload, the
``.sig`` manifest unchanged. That costs ``1 + layers`` small requests and no process, where
``cosign verify`` would cost a process start and more requests for the same answer. The check
is sound because the layer digest is checked on the bytes read and the signature on the
payload; a signature by any other key, or for another repository or registry name, does not
count, and the digest is signed again.

Attestations (``cosign attest``) are checked alike in ``sha256-<hex>.att``: an in-toto
statement in a DSSE envelope signed by the active key, with the predicate type asked and the
predicate of the file (:func:`same_predicate`), is not made again.

:meth:`Signer.verify` checks a reference with every published key (active and verifying)
by ``cosign verify --insecure-ignore-tlog``; any one verifying is enough.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, ContentError, RegistryError
from airgapped_registry.oci.manifest import image_parts, parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.reference import DIGEST_PATTERN
from airgapped_registry.signing import keys
from airgapped_registry.signing.config import SigningConfig
from airgapped_registry.tools import cosign
from airgapped_registry.tools.process import Tools, tool_error
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient

log = logging.getLogger(__name__)

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
# cosign attest --type: the short names this module checks, and the predicate type each means.
PREDICATE_TYPES = {
    "vuln": cosign.VULN_PREDICATE_TYPE,
    "custom": "https://cosign.sigstore.dev/attestation/v1",
}

SIGNED, SKIPPED, FAILED = "signed", "skipped", "failed"


class SigningError(AirgapError):
    """A digest could not be signed, attested or verified; the message names it."""


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def signature_tag(digest: str, kind: str = "sig") -> str:
    """``sha256:<hex>`` → ``sha256-<hex>.<kind>``: where cosign keeps what refers to it."""
    return f"{digest.replace(':', '-')}.{kind}"


class PublicKey:
    """A cosign public key (ECDSA, PEM), checking signatures as cosign makes them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SigningError(f"{path}: not a readable PEM public key ({exc})") from None
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise SigningError(f"{path}: not an ECDSA key (cosign's key pairs are)")
        self.key = loaded

    def verifies(self, signature_b64: str, data: bytes) -> bool:
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


def payload_names(payload: bytes, digest: str, identity: str) -> bool:
    """Whether a simple-signing payload names ``digest`` under ``identity``
    (``registry/repository``): a signature made for another digest, repository or registry
    name proves nothing about this one."""
    try:
        critical = json.loads(payload)["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        signed_identity = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(signed_digest == digest and signed_identity == identity)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what an envelope's signatures sign."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def same_predicate(wanted: Any, stored: Any) -> bool:
    """Whether the predicate cosign stored holds everything of the one given.

    cosign re-encodes a ``vuln`` predicate through its own type, which adds empty fields
    (``invocation``) and drops none of the given ones: so every key given must be there
    with an equal value, extra keys in the stored one are cosign's.
    """
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            key in stored and same_predicate(value, stored[key]) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(stored, list)
            and len(wanted) == len(stored)
            and all(same_predicate(a, b) for a, b in zip(wanted, stored, strict=True))
        )
    return bool(wanted == stored)


@dataclass(frozen=True)
class Outcome:
    """What happened to one digest."""

    repository: str
    digest: str
    result: str
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "result": self.result,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


class Signer:
    """Signs, attests and verifies through ``config.registry`` (see the module docstring).

    Use as a context manager: it holds a client for the gateway and a private directory with
    cosign's CA bundle and ``DOCKER_CONFIG``. The password is read when first needed, so
    :meth:`verify` runs without it.
    """

    def __init__(
        self,
        config: SigningConfig,
        *,
        cosign_path: str = "cosign",
        tools: Tools | None = None,
        workers: int = 2,
    ) -> None:
        self.config = config
        self.cosign = cosign_path
        self.tools = tools or Tools(timeout=defaults.TOOL_TIMEOUT)
        self.workers = max(1, workers)
        self._ring = keys.load(config.keys_dir)
        self._ring_stamp = _stamp(self._ring.record)
        self._password: str | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._client: RegistryClient | None = None
        self._flags: list[str] = []
        self._env: dict[str, str] = {}

    def __enter__(self) -> Self:
        access = self.config.access()
        self._scratch = tempfile.TemporaryDirectory(prefix="airgap-sign-")
        self._flags, self._env = cosign.registry_flags(access, Path(self._scratch.name))
        self._client = access.client()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    @property
    def ring(self) -> keys.KeyRing:
        """The keys as keys.json records them now: a signer that lives long (the scan
        service's) signs with the key a rotation made active, and stops offering a retired
        one, without a restart. keys.json is replaced by a rename, so its stat changes."""
        stamp = _stamp(self._ring.record)
        if stamp != self._ring_stamp:
            self._ring = keys.load(self.config.keys_dir)
            self._ring_stamp = stamp
        return self._ring

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            raise SigningError("the signer is used outside its 'with' block")
        return self._client

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = self.config.password()
        return self._password

    def reference(self, repository: str, reference: str) -> str:
        """``registry/repository@digest`` (or ``:tag``) as nodes write it."""
        separator = "@" if DIGEST_PATTERN.fullmatch(reference) else ":"
        return f"{self.config.registry}/{repository}{separator}{reference}"

    # -- looking ------------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> str:
        """The digest a tag (or digest) names at the gateway; one ``HEAD``."""
        found = self.client.head_manifest(repository, reference)
        if found is None:
            raise SigningError(f"{self.reference(repository, reference)}: no such manifest")
        return found.digest

    def subjects(self, repository: str, digest: str) -> list[str]:
        """``digest``, then the children it lists when it is an index."""
        body, media_type, _ = self.client.get_manifest(repository, digest)
        if media_type not in INDEX_MEDIA_TYPES:
            return [digest]
        document = parse_manifest(body, self.reference(repository, digest))
        children = [item.get("digest") for item in document.get("manifests") or []]
        return [digest, *(child for child in children if isinstance(child, str))]

    def _layers(self, repository: str, tag: str) -> list[dict[str, Any]]:
        """The layers (descriptor objects) of ``repository:tag``; none when it is absent."""
        try:
            body, _, _ = self.client.get_manifest(repository, tag)
        except RegistryError as exc:
            if exc.status == 404:
                return []
            raise
        where = f"{self.config.registry}/{repository}:{tag}"
        document = parse_manifest(body, where)
        image_parts(document, where)  # every descriptor checked
        return [layer for layer in document.get("layers") or [] if isinstance(layer, dict)]

    def signed_by(self, repository: str, digest: str, key: PublicKey) -> bool:
        """Whether ``digest`` carries a signature by ``key`` made for it in ``repository``
        under ``signing.registry`` (see the module docstring for the cost)."""
        identity = f"{self.config.registry}/{repository}"
        for layer in self._layers(repository, signature_tag(digest)):
            annotations = layer.get("annotations") or {}
            signature = annotations.get(SIGNATURE_ANNOTATION)
            if layer.get("mediaType") != SIMPLE_SIGNING or not isinstance(signature, str):
                continue
            payload = self.client.get_blob(repository, layer["digest"])
            if key.verifies(signature, payload) and payload_names(payload, digest, identity):
                return True
        return False

    def attested_by(
        self, repository: str, digest: str, key: PublicKey, predicate_type: str, predicate: Any
    ) -> bool:
        """Whether ``digest`` carries an attestation by ``key`` of ``predicate_type`` whose
        predicate holds ``predicate`` (:func:`same_predicate`)."""
        for layer in self._layers(repository, signature_tag(digest, "att")):
            if layer.get("mediaType") != DSSE_ENVELOPE:
                continue
            envelope = json.loads(self.client.get_blob(repository, layer["digest"]))
            try:
                payload = base64.b64decode(envelope["payload"])
                signatures = [item["sig"] for item in envelope["signatures"]]
                payload_type = envelope["payloadType"]
            except (ValueError, KeyError, TypeError):
                continue
            if not any(key.verifies(sig, pae(payload_type, payload)) for sig in signatures):
                continue
            try:
                statement = json.loads(payload)
                subjects = [item["digest"]["sha256"] for item in statement["subject"]]
            except (ValueError, KeyError, TypeError):
                continue
            if (
                digest.removeprefix("sha256:") in subjects
                and statement.get("predicateType") == predicate_type
                and same_predicate(predicate, statement.get("predicate"))
            ):
                return True
        return False

    # -- signing ------------------------------------------------------------------------

    def sign_one(self, repository: str, digest: str) -> Outcome:
        """Sign one manifest with the active key, unless it carries that key's signature."""
        started = time.monotonic()
        reference = self.reference(repository, digest)
        active = self.ring.active
        try:
            key = PublicKey(active.public_key(self.ring.directory))
            if self.signed_by(repository, digest, key):
                return Outcome(
                    repository,
                    digest,
                    SKIPPED,
                    f"signed by key {active.id}",
                    time.monotonic() - started,
                )
            argv = cosign.sign_argv(
                self.cosign, active.private_key(self.ring.directory), reference, self._flags
            )
            self._run(argv, f"{reference}: cosign sign")
        except (AirgapError, ValueError) as exc:
            return Outcome(repository, digest, FAILED, str(exc), time.monotonic() - started)
        return Outcome(repository, digest, SIGNED, f"key {active.id}", time.monotonic() - started)

    def sign(self, repository: str, digest: str) -> list[Outcome]:
        """Sign ``digest`` and, for an index, each child it lists."""
        try:
            subjects = self.subjects(repository, digest)
        except (AirgapError, ValueError) as exc:
            return [
                Outcome(repository, digest, FAILED, f"{self.reference(repository, digest)}: {exc}")
            ]
        return [self.sign_one(repository, subject) for subject in subjects]

    def sign_all(self, targets: Iterable[tuple[str, str]], expand: bool = True) -> dict[str, Any]:
        """Sign every ``(repository, digest)``, ``workers`` at a time; the report counts and
        lists each digest once. ``expand``: look each digest up and add an index's children
        (a caller that lists them already, from a lock, saves a ``GET`` per digest)."""
        started = time.monotonic()
        before = RequestCount.of(self.client)
        runs_before = self.tools.runs["cosign"]
        wanted = list(dict.fromkeys(targets))
        subjects: list[tuple[str, str]] = []
        outcomes: list[Outcome] = []
        for repository, digest in wanted:
            if not expand:
                subjects.append((repository, digest))
                continue
            try:
                subjects += [(repository, s) for s in self.subjects(repository, digest)]
            except (AirgapError, ValueError) as exc:
                where = self.reference(repository, digest)
                outcomes.append(Outcome(repository, digest, FAILED, f"{where}: {exc}"))
        subjects = list(dict.fromkeys(subjects))
        with ThreadPoolExecutor(self.workers) as pool:
            outcomes += pool.map(lambda target: self.sign_one(*target), subjects)
        return self.report(outcomes, before, runs_before, started)

    def report(
        self, outcomes: list[Outcome], before: RequestCount, runs_before: int, started: float
    ) -> dict[str, Any]:
        counts = {
            kind: sum(o.result == kind for o in outcomes) for kind in (SIGNED, SKIPPED, FAILED)
        }
        return {
            "registry": self.config.registry,
            "key": self.ring.active.id,
            **counts,
            "errors": [o.detail for o in outcomes if o.result == FAILED],
            "results": [o.to_json() for o in outcomes],
            "requests": before.since(self.client),
            "tools": {"cosign": self.tools.runs["cosign"] - runs_before},
            "seconds": round(time.monotonic() - started, 3),
        }

    def attest(
        self,
        repository: str,
        digest: str,
        predicate_path: Path,
        predicate_type: str = "vuln",
        replace: bool = False,
    ) -> Outcome:
        """Attest ``digest`` with the predicate file, by the active key, unless an equal
        attestation by that key is there. ``replace``: drop the digest's other attestations
        of this type first (cosign ``--replace``: whoever signed them); otherwise the new
        one is added beside them."""
        started = time.monotonic()
        reference = self.reference(repository, digest)
        active = self.ring.active
        try:
            if not DIGEST_PATTERN.fullmatch(digest):
                raise SigningError(f"{reference}: attest a digest, not a tag")
            uri = PREDICATE_TYPES.get(predicate_type, predicate_type)
            try:
                predicate = json.loads(predicate_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SigningError(f"{reference}: predicate {predicate_path}: {exc}") from None
            key = PublicKey(active.public_key(self.ring.directory))
            if self.attested_by(repository, digest, key, uri, predicate):
                return Outcome(
                    repository,
                    digest,
                    SKIPPED,
                    f"attested by key {active.id}",
                    time.monotonic() - started,
                )
            argv = cosign.attest_argv(
                self.cosign,
                active.private_key(self.ring.directory),
                reference,
                predicate_path,
                predicate_type,
                self._flags,
                replace,
            )
            self._run(argv, f"{reference}: cosign attest")
        except (AirgapError, ValueError) as exc:
            return Outcome(repository, digest, FAILED, str(exc), time.monotonic() - started)
        return Outcome(
            repository, digest, SIGNED, f"attested, key {active.id}", time.monotonic() - started
        )

    def _run(self, argv: list[str], what: str) -> None:
        completed = self.tools.run("cosign", argv, cosign.with_password(self._env, self.password))
        if completed.returncode != 0:
            message = tool_error(completed.stderr or completed.stdout)
            raise SigningError(f"{what}: {cosign.hide(message, self.password)}")

    # -- verifying ----------------------------------------------------------------------

    def verify(self, repository: str, reference: str) -> dict[str, Any]:
        """Check ``repository`` at ``reference`` (tag or digest) with every published key;
        the report names the keys that verify it (``verified``: at least one)."""
        target = self.reference(repository, reference)
        if not self.ring.published:
            raise SigningError(
                f"{self.ring.record}: no active signing key, nothing to verify with "
                "(run: airgap signing-key init --config ...)"
            )
        verified: list[str] = []
        problems: list[str] = []
        for key in self.ring.published:
            argv = cosign.verify_argv(
                self.cosign, key.public_key(self.ring.directory), target, self._flags
            )
            completed = self.tools.run("cosign", argv, self._env)
            if completed.returncode == 0:
                verified.append(key.id)
            else:
                problems.append(f"key {key.id}: {tool_error(completed.stderr)}")
        return {
            "reference": target,
            "verified": bool(verified),
            "keys": verified,
            "published": [key.id for key in self.ring.published],
            "problems": problems,
        }


def split_reference(text: str) -> tuple[str, str]:
    """``repository@digest`` or ``repository:tag`` → ``(repository, digest or tag)``."""
    if "@" in text:
        repository, digest = text.split("@", 1)
        if not DIGEST_PATTERN.fullmatch(digest):
            raise ContentError(f"{text}: {digest!r} is not a digest")
        return repository, digest
    repository, colon, tag = text.rpartition(":")
    if not colon or "/" in tag or not repository:
        raise ContentError(f"{text}: name REPOSITORY@sha256:... or REPOSITORY:TAG")
    return repository, tag
