"""Cluster policies (``airgapped_registry.gate.clusterpolicy``, ``airgap policy render``).

Each generated document is validated against its controller's CRD (tests/fixtures/crds) as
the API server validates a custom resource before storing it: the ``openAPIV3Schema`` of the
version the document names, with unknown fields refused (kubectl's default ``--validate=strict``)
except where the schema preserves them. policy-controller's CRD leaves most checks to its
webhook, so the webhook's own rules for what we generate are checked too, after its source
(``pkg/apis/policy/v1beta1/clusterimagepolicy_validation.go``, ``pkg/apis/glob/glob.go``).
Which images each document subjects to the signature is checked by matching references
the way each controller matches them.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from airgapped_registry.cli import main
from airgapped_registry.cli.policy import RENDERERS
from airgapped_registry.gate import clusterpolicy

CRDS = Path(__file__).resolve().parents[1] / "fixtures" / "crds"
KYVERNO_CRD = CRDS / "kyverno_clusterpolicies.crd.yaml"
POLICY_CONTROLLER_CRD = CRDS / "sigstore-policy-controller_clusterimagepolicy.crd.yaml"
REGISTRY = "registry.example:443"
DIGEST = "sha256:" + "ab" * 32


def public_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


KEYS = [public_key(), public_key()]


# -- the CRD schemas as the API server applies them -------------------------------------------


def test_the_crd_files_are_the_upstream_ones() -> None:
    """The README names each file's origin and sha256: a file edited by hand fails here."""
    readme = (CRDS / "README.md").read_text()
    for crd in (KYVERNO_CRD, POLICY_CONTROLLER_CRD):
        row = next(line for line in readme.splitlines() if line.startswith(f"| {crd.name} "))
        assert hashlib.sha256(crd.read_bytes()).hexdigest() in row, crd.name


def structural(schema: Any) -> Any:
    """A CRD's structural schema as a JSON Schema: the ``x-kubernetes-*`` extensions turned
    into what they mean for validation, and unknown fields refused unless preserved."""
    if isinstance(schema, list):
        return [structural(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {k: structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-list-type") == "set":
        converted["uniqueItems"] = True
    if schema.get("nullable"):
        converted["type"] = [schema["type"], "null"]
    preserved = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema and "additionalProperties" not in schema and not preserved:
        converted["additionalProperties"] = False
    return converted


@cache
def crd(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def validator(document: dict[str, Any], crd_path: Path) -> jsonschema.Draft7Validator:
    """The validator for ``document``'s apiVersion and kind; fails if the CRD does not serve
    them."""
    definition = crd(crd_path)
    group, _, version = document["apiVersion"].partition("/")
    assert group == definition["spec"]["group"]
    assert document["kind"] == definition["spec"]["names"]["kind"]
    served = {v["name"]: v for v in definition["spec"]["versions"] if v["served"]}
    assert version in served, f"{document['apiVersion']} is not served by {crd_path.name}"
    schema = structural(served[version]["schema"]["openAPIV3Schema"])
    # The API server knows these at the root of every object, whether the CRD names them or not.
    implicit = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}}
    schema["properties"] = {**implicit, "metadata": {"type": "object"}, **schema["properties"]}
    return jsonschema.Draft7Validator(schema)


DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def problems(document: dict[str, Any], crd_path: Path) -> list[str]:
    """What the API server would refuse in ``document`` (empty: it is stored)."""
    found = [
        f"{'.'.join(map(str, error.absolute_path)) or '<document>'}: {error.message}"
        for error in validator(document, crd_path).iter_errors(document)
    ]
    name = document.get("metadata", {}).get("name", "")
    if not (DNS_SUBDOMAIN.fullmatch(name) and len(name) <= 253):
        found.append(f"metadata.name: {name!r} is not a DNS subdomain")
    return found


# -- policy-controller's webhook and matching, after its source --------------------------------

VALID_GLOB = re.compile(r"^[a-zA-Z0-9-_:\/\*\.]+$")


def glob_regex(glob: str) -> re.Pattern[str]:
    """pkg/apis/glob Compile: '.' literal, '**' any run, '*' any run without '/'."""
    assert VALID_GLOB.match(glob), f"policy-controller refuses the glob {glob!r}"
    text = glob.replace(".", r"\.").replace("**", "#").replace("*", "[^/]*").replace("#", ".*")
    return re.compile(f"^{text}$")


def webhook_problems(policy: dict[str, Any]) -> list[str]:
    """The checks policy-controller's webhook makes on a ClusterImagePolicy we generate."""
    spec = policy["spec"]
    found = []
    if not spec.get("images"):
        found.append("images: missing")
    for image in spec.get("images", []):
        if not image.get("glob") or not VALID_GLOB.match(image["glob"]):
            found.append(f"images: invalid glob {image.get('glob')!r}")
    if spec.get("mode", "enforce") not in ("enforce", "warn"):
        found.append(f"mode: unsupported {spec['mode']!r}")
    for authority in spec.get("authorities", []):
        kinds = [kind for kind in ("key", "keyless", "static") if kind in authority]
        if len(kinds) != 1:
            found.append(f"authority {authority.get('name')}: exactly one of key, keyless, static")
        if "key" in authority:
            try:
                load_pem_public_key(authority["key"]["data"].encode())
            except (KeyError, ValueError):
                found.append(f"authority {authority.get('name')}: key.data is not a public key")
        if "static" in authority and authority["static"].get("action") not in ("pass", "fail"):
            found.append(f"authority {authority.get('name')}: static.action pass or fail")
    return found


def policy_controller_requires_signature(items: list[dict[str, Any]], reference: str) -> bool:
    """Whether policy-controller admits ``reference`` only with a key signature: it must pass
    every policy whose globs match it, so any matching policy with key authorities."""
    return any(
        any(glob_regex(i["glob"]).match(reference) for i in policy["spec"]["images"])
        and any("key" in authority for authority in policy["spec"]["authorities"])
        for policy in items
    )


def policy_controller_matches(items: list[dict[str, Any]], reference: str) -> bool:
    return any(
        glob_regex(image["glob"]).match(reference)
        for policy in items
        for image in policy["spec"]["images"]
    )


def kyverno_requires_signature(policy: dict[str, Any], reference: str) -> bool:
    """Kyverno's wildcard ('*' any run, '/' included; '?' one character) on the reference."""

    def match(pattern: str) -> bool:
        text = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
        return re.fullmatch(text, reference) is not None

    (rule,) = policy["spec"]["rules"][0]["verifyImages"]
    return any(map(match, rule["imageReferences"])) and not any(
        map(match, rule.get("skipImageReferences", []))
    )


# -- what is generated ---------------------------------------------------------------------------

ZONE_SETS = [[], ["ci/"], ["ci/", "dev/"], ["team/ci/", "ci/"], ["dev"], ["c/", "ci/"]]


@pytest.mark.parametrize("zones", ZONE_SETS, ids=lambda zones: ",".join(zones) or "none")
@pytest.mark.parametrize("keys", [KEYS[:1], KEYS], ids=["one-key", "two-keys"])
def test_kyverno_policy_validates_against_the_crd(zones: list[str], keys: list[str]) -> None:
    policy = clusterpolicy.kyverno(REGISTRY, zones, keys)
    assert problems(policy, KYVERNO_CRD) == []


@pytest.mark.parametrize("zones", ZONE_SETS, ids=lambda zones: ",".join(zones) or "none")
@pytest.mark.parametrize("keys", [KEYS[:1], KEYS], ids=["one-key", "two-keys"])
def test_policy_controller_policies_validate_against_the_crd(
    zones: list[str], keys: list[str]
) -> None:
    listing = clusterpolicy.policy_controller(REGISTRY, zones, keys)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    assert len(listing["items"]) == (2 if zones else 1)
    for policy in listing["items"]:
        assert problems(policy, POLICY_CONTROLLER_CRD) == []
        assert webhook_problems(policy) == []


def test_kyverno_verifies_offline_with_every_key() -> None:
    (rule,) = clusterpolicy.kyverno(REGISTRY, ["ci/"], KEYS)["spec"]["rules"][0]["verifyImages"]
    (attestor,) = rule["attestors"]
    assert attestor["count"] == 1  # any one published key
    assert [entry["keys"]["publicKeys"] for entry in attestor["entries"]] == KEYS
    for entry in attestor["entries"]:
        assert entry["keys"]["rekor"] == {"ignoreTlog": True}  # no URL: nothing to reach
        assert entry["keys"]["ctlog"] == {"ignoreSCT": True}
    assert (rule["failureAction"], rule["required"], rule["verifyDigest"]) == ("Enforce", 1, 1)


def test_policy_controller_verifies_offline_with_every_key() -> None:
    protected, landing = clusterpolicy.policy_controller(REGISTRY, ["ci/"], KEYS)["items"]
    authorities = protected["spec"]["authorities"]
    assert [a["key"]["data"] for a in authorities] == KEYS
    # A key authority without ctlog is verified with no transparency log at all.
    for authority in authorities:
        assert set(authority) == {"name", "key"}
    passing = [{"name": "landing-zone", "static": {"action": "pass"}}]
    assert landing["spec"]["authorities"] == passing


def repository_names() -> Iterator[str]:
    """Names at the edges of the landing zones above, and random names of the grammar."""
    yield from [
        "c", "ci", "cix", "ci-x", "ci.x", "ci_x", "ci/app", "ci/a/b", "ci/app/x", "cia/app",
        "c/app", "c/ci/app", "dev", "de", "d", "devtools", "dev/app", "dev-x/app", "team",
        "team/ci", "team/ci/app", "team/cix/app", "teamx/ci/app", "prod/ci/app", "prod/app",
        "app", "a", "0", "9/x", "sample/base", "x__y/z", "a--b", "ci2", "c3/app", "dev0/x",
    ]  # fmt: skip
    rng = random.Random(10)
    words = ["ci", "c", "dev", "d", "team", "prod", "app", "x", "i", "v", "0", "7"]
    separators = ["", ".", "_", "-", "__"]
    for _ in range(3000):
        components = []
        for _ in range(rng.randint(1, 3)):
            component = rng.choice(words)
            if rng.random() < 0.4:
                component += rng.choice(separators) + rng.choice(words)
            components.append(component)
        yield "/".join(components)


def references(name: str) -> list[str]:
    return [f"{REGISTRY}/{name}@{DIGEST}", f"{REGISTRY}/{name}:1.0"]


@pytest.mark.parametrize("zones", ZONE_SETS, ids=lambda zones: ",".join(zones) or "none")
def test_signatures_are_required_exactly_outside_the_landing_zones(zones: list[str]) -> None:
    kyverno = clusterpolicy.kyverno(REGISTRY, zones, KEYS)
    items = clusterpolicy.policy_controller(REGISTRY, zones, KEYS)["items"]
    for name in set(repository_names()):
        protected = not any(name.startswith(zone) for zone in zones)
        for reference in references(name):
            assert kyverno_requires_signature(kyverno, reference) is protected, reference
            if not protected:
                assert not policy_controller_requires_signature(items, reference), reference
                assert policy_controller_matches(items, reference), reference  # passes
                continue
            # A zone not ending in '/' ('dev') leaves the repositories named exactly by its
            # start ('d', 'de') to no-match-policy: matched by no policy (documented).
            unmatched = any(not zone.endswith("/") and zone.startswith(name) for zone in zones)
            assert policy_controller_requires_signature(items, reference) is not unmatched, (
                reference
            )
            assert policy_controller_matches(items, reference) is not unmatched, reference


def test_other_registries_are_left_alone() -> None:
    kyverno = clusterpolicy.kyverno(REGISTRY, ["ci/"], KEYS)
    items = clusterpolicy.policy_controller(REGISTRY, ["ci/"], KEYS)["items"]
    # Another registry, and this one named without its port: not the images the policy names.
    for host in ["other.example:443", "registry.example"]:
        reference = f"{host}/prod/app@{DIGEST}"
        assert not kyverno_requires_signature(kyverno, reference)
        assert not policy_controller_matches(items, reference)


# -- the validation can fail ---------------------------------------------------------------------


def kyverno_rule(policy: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = policy["spec"]["rules"][0]
    return rule


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda p: kyverno_rule(p).pop("name"), "'name' is a required property"),
        (lambda p: kyverno_rule(p).pop("match"), "'match' is a required property"),
        (lambda p: p.pop("spec"), "'spec' is a required property"),
        (
            lambda p: kyverno_rule(p)["verifyImages"][0].update(failureAction="enforce"),
            "'enforce' is not one of ['Audit', 'Enforce']",
        ),
        (
            lambda p: kyverno_rule(p).update(verifyImage=kyverno_rule(p).pop("verifyImages")),
            "Additional properties are not allowed ('verifyImage' was unexpected)",
        ),
        (
            lambda p: kyverno_rule(p)["verifyImages"][0]["attestors"][0].update(count="1"),
            "'1' is not of type 'integer'",
        ),
        (lambda p: p["metadata"].update(name="Signed_Images"), "is not a DNS subdomain"),
    ],
    ids=["rule-name", "rule-match", "spec", "enum", "unknown-field", "type", "metadata-name"],
)
def test_the_kyverno_crd_refuses_a_broken_policy(break_it: Any, expected: str) -> None:
    policy = clusterpolicy.kyverno(REGISTRY, ["ci/"], KEYS)
    break_it(policy)
    assert any(expected in problem for problem in problems(policy, KYVERNO_CRD)), problems(
        policy, KYVERNO_CRD
    )


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda p: p["spec"]["authorities"][0]["key"].update(pem="x"),
            "Additional properties are not allowed ('pem' was unexpected)",
        ),
        (lambda p: p["spec"].update(images="registry/**"), "is not of type 'array'"),
        (lambda p: p["spec"]["authorities"][0].update(ctlog=[]), "is not of type 'object'"),
    ],
    ids=["unknown-field", "images-type", "ctlog-type"],
)
def test_the_policy_controller_crd_refuses_a_broken_policy(break_it: Any, expected: str) -> None:
    policy = clusterpolicy.policy_controller(REGISTRY, ["ci/"], KEYS)["items"][0]
    break_it(policy)
    assert any(expected in problem for problem in problems(policy, POLICY_CONTROLLER_CRD))


def test_a_version_the_crd_does_not_serve_is_refused() -> None:
    policy = clusterpolicy.policy_controller(REGISTRY, [], KEYS)["items"][0]
    policy["apiVersion"] = "policy.sigstore.dev/v1"
    with pytest.raises(AssertionError, match="is not served"):
        problems(policy, POLICY_CONTROLLER_CRD)


def test_the_webhook_checks_refuse_what_policy_controller_refuses() -> None:
    policy = clusterpolicy.policy_controller(REGISTRY, [], KEYS)["items"][0]
    policy["spec"]["images"].append({"glob": f"{REGISTRY}/app@sha256:*"})
    policy["spec"]["authorities"][0]["static"] = {"action": "pass"}
    policy["spec"]["authorities"][1]["key"]["data"] = "not a key"
    assert webhook_problems(policy) == [
        f"images: invalid glob '{REGISTRY}/app@sha256:*'",
        "authority appliance-key-1: exactly one of key, keyless, static",
        "authority appliance-key-2: key.data is not a public key",
    ]


# -- inputs refused --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "zones", "keys", "message"),
    [
        ("https://registry:443", [], KEYS, "registry 'https://registry:443': expected host"),
        ("registry:443/prod", [], KEYS, "no scheme, no path"),
        (REGISTRY, [""], KEYS, "landing zone '': an empty prefix"),
        (REGISTRY, ["CI/"], KEYS, "landing zone 'CI/': not the start of a repository name"),
        (REGISTRY, ["ci//"], KEYS, "landing zone 'ci//'"),
        (REGISTRY, ["ci/*"], KEYS, "landing zone 'ci/*'"),
        (REGISTRY, [], [], "no public key"),
        (REGISTRY, [], ["hello"], "public key 1: expected exactly one PEM block"),
        (REGISTRY, [], [KEYS[0] + KEYS[1]], "public key 1: expected exactly one PEM block"),
        (REGISTRY, [], [KEYS[0], KEYS[1].replace("M", "N")], "public key 2: not a PEM public"),
    ],
)
@pytest.mark.parametrize("render", [clusterpolicy.kyverno, clusterpolicy.policy_controller])
def test_bad_inputs_are_refused_naming_them(
    render: Any, registry: str, zones: list[str], keys: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render(registry, zones, keys)


# -- airgap policy render ------------------------------------------------------------------------


@pytest.fixture
def key_files(tmp_path: Path) -> list[Path]:
    paths = []
    for number, key in enumerate(KEYS, 1):
        path = tmp_path / f"cosign-{number}.pub"
        path.write_text(key)
        paths.append(path)
    return paths


@pytest.mark.parametrize("fmt", ["kyverno", "policy-controller"])
def test_render_writes_the_yaml_of_the_document(
    fmt: str, key_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [arg for path in key_files for arg in ("--key", str(path))]
    common = ["policy", "render", "--format", fmt, "--registry", REGISTRY, "--landing-zone", "ci/"]
    with pytest.raises(SystemExit) as stdout_run:
        main([*common, *keys])
    assert stdout_run.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    output = tmp_path / "policy.yaml"
    assert main([*common, *keys, "--output", str(output)]) == 0
    written = yaml.safe_load(output.read_text())
    expected = RENDERERS[fmt](REGISTRY, ["ci/"], KEYS)
    assert printed == written == expected
    assert "publicKeys: |" in output.read_text() or "data: |" in output.read_text()


def test_render_names_the_key_file_it_cannot_use(
    key_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "cosign.key"
    bad.write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n-----END x-----\n")
    common = ["policy", "render", "--format", "kyverno", "--registry", REGISTRY]
    assert main([*common, "--key", str(key_files[0]), "--key", str(bad)]) == 1
    assert f"public key {bad}: not a PEM public key" in capsys.readouterr().err
    assert main([*common, "--key", str(tmp_path / "missing.pub")]) == 1
    assert f"public key {tmp_path / 'missing.pub'}: cannot be read" in capsys.readouterr().err


def test_render_takes_the_landing_zones_from_the_gate_policy(
    key_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text(
        "version: 1\nlanding_zones: [ci/, dev/]\ngrants:\n"
        "  - {identity: {ou: puller}, role: puller}\n"
    )
    output = tmp_path / "policy.yaml"
    common = ["policy", "render", "--format", "kyverno", "--registry", REGISTRY]
    assert (
        main([*common, "--policy", str(gate), "--key", str(key_files[0]), "-o", str(output)]) == 0
    )
    written = yaml.safe_load(output.read_text())
    assert written == clusterpolicy.kyverno(REGISTRY, ["ci/", "dev/"], KEYS[:1])
    # A policy the gate refuses is refused here too, naming its line.
    gate.write_text("version: 1\nlanding_zones: [CI/]\ngrants: []\n")
    assert main([*common, "--policy", str(gate), "--key", str(key_files[0])]) == 1
    assert f"{gate}:2" in capsys.readouterr().err
