"""The internal CA's renewal decision (plugins/filter/internal_ca.py), case by case.

Certificates are described the way community.crypto's x509_certificate_info filter
reads them; tests/integration/test_internal_ca.py runs the role itself on real files.
"""

from __future__ import annotations

import datetime

import pytest

from plugins.filter.internal_ca import FilterModule, internal_ca_issue
from plugins.filter.nightly import airgap_nightly_changed

NOW = datetime.datetime(2026, 6, 1, 12, 0, 0)
CA = "aa:bb:cc"
NEXT_CA = "dd:ee:ff"
ORG = "Airgapped Registry"
KEY = "-----BEGIN PUBLIC KEY-----\nkey\n-----END PUBLIC KEY-----\n"


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%SZ")


def server(**changes):
    return {"name": "registry", "san": ["DNS:registry", "IP:127.0.0.1"], **changes}


def client(**changes):
    return {"name": "node", "role": "puller", **changes}


def on_disk(request, *, issued_days_ago=10, lifetime_days=90, **changes):
    """What community.crypto reads from the certificate issued for ``request``."""
    not_before = NOW - datetime.timedelta(days=issued_days_ago)
    subject = {"commonName": request["name"], "organizationName": ORG}
    if "role" in request:
        subject["organizationalUnitName"] = request["role"]
    cert = {
        "not_before": stamp(not_before),
        "not_after": stamp(not_before + datetime.timedelta(days=lifetime_days)),
        "serial_number": 1234,
        "subject": subject,
        "subject_alt_name": list(request.get("san", [])) or None,
        "authority_key_identifier": CA,
        "public_key": KEY,
        **changes,
    }
    return {request["name"]: {"cert": cert, "key": {"public_key": KEY}}}


def decide(request, found, *, signer=CA, revoked=(), forced=(), now=NOW):
    return internal_ca_issue([request], found, signer, list(revoked), list(forced), ORG, now).get(
        request["name"]
    )


CASES = [
    # (case, request, on disk, decide() options, expected)
    ("new identity", server(), {}, {}, {"new_key": False, "why": "new"}),
    ("fresh server", server(), on_disk(server()), {}, None),
    ("fresh client", client(), on_disk(client()), {}, None),
    ("just before the last third", server(), on_disk(server(), issued_days_ago=59), {}, None),
    (
        "in the last third",
        server(),
        on_disk(server(), issued_days_ago=61),
        {},
        {"new_key": True, "why": "less than a third"},
    ),
    (
        "expired",
        client(),
        on_disk(client(), issued_days_ago=400, lifetime_days=365),
        {},
        {"new_key": True, "why": "less than a third"},
    ),
    (
        "forced",
        server(),
        on_disk(server()),
        {"forced": ["registry"]},
        {"new_key": True, "why": "forced"},
    ),
    ("another forced", server(), on_disk(server()), {"forced": ["node"]}, None),
    (
        "revoked",
        client(),
        on_disk(client()),
        {"revoked": [1234]},
        {"new_key": True, "why": "revoked"},
    ),
    ("another revoked", client(), on_disk(client()), {"revoked": [99]}, None),
    (
        "role changed",
        client(role="pusher"),
        on_disk(client()),
        {},
        {"new_key": False, "why": "subject changed"},
    ),
    (
        "names changed",
        server(san=["DNS:registry", "DNS:registry.example.internal"]),
        on_disk(server()),
        {},
        {"new_key": False, "why": "names changed"},
    ),
    (
        "names in another order",
        server(san=["IP:127.0.0.1", "DNS:registry"]),
        on_disk(server()),
        {},
        None,
    ),
    # CA rotation: after `introduce` the current CA still signs; after `switch` every
    # certificate of the old CA is reissued by the new one, keeping its key.
    ("rotation introduced", server(), on_disk(server()), {"signer": CA}, None),
    (
        "rotation switched",
        server(),
        on_disk(server()),
        {"signer": NEXT_CA},
        {"new_key": False, "why": "signed by another CA"},
    ),
    (
        "no CA yet (check mode on a new directory)",
        server(),
        on_disk(server()),
        {"signer": ""},
        {"new_key": False, "why": "signed by another CA"},
    ),
    (
        "renewal interrupted between key and certificate",
        server(),
        on_disk(server(), public_key="-----BEGIN PUBLIC KEY-----\nold\n-----END PUBLIC KEY-----\n"),
        {},
        {"new_key": False, "why": "does not match its key"},
    ),
    (
        "renewal wins over a reissue",
        client(role="admin"),
        on_disk(client(), issued_days_ago=300, lifetime_days=365),
        {},
        {"new_key": True, "why": "less than a third"},
    ),
]


@pytest.mark.parametrize(
    ("request_", "found", "options", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision(request_, found, options, expected) -> None:
    decided = decide(request_, found, **options)
    if expected is None or decided is None:
        assert decided == expected
    else:
        assert decided["new_key"] == expected["new_key"]
        assert expected["why"] in decided["why"]


def test_an_aware_now_is_read_as_utc() -> None:
    found = on_disk(server(), issued_days_ago=59)
    aware = (NOW + datetime.timedelta(days=2)).replace(tzinfo=datetime.UTC)
    assert decide(server(), found, now=aware)["new_key"] is True
    east = aware.astimezone(datetime.timezone(datetime.timedelta(hours=5)))
    assert decide(server(), found, now=east)["new_key"] is True


def test_only_identities_to_issue_are_returned() -> None:
    found = {**on_disk(server()), **on_disk(client(), issued_days_ago=364, lifetime_days=365)}
    issue = internal_ca_issue([server(), client(), client(name="ci")], found, CA, [], [], ORG, NOW)
    assert set(issue) == {"node", "ci"}
    assert FilterModule().filters()["internal_ca_issue"] is internal_ca_issue


@pytest.mark.parametrize(
    ("run", "changed"),
    [
        ({"sync": {"copied": 0, "relock": {"written": False}}, "lock": {"changed": False}}, False),
        ({"sync": {"copied": 2}, "lock": {"changed": False}}, True),
        ({"sync": {"copied": 0, "relock": {"written": True}}, "lock": {"changed": True}}, True),
        ({"sync": {"copied": 0}, "lock": {"changed": True}, "verify": {"failed": 0}}, True),
        ({"sync": None, "lock": None, "verify": None}, False),
    ],
)
def test_nightly_changed(run, changed) -> None:
    assert airgap_nightly_changed(run) is changed
