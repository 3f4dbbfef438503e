"""Filter plugin: which certificates the internal CA issues on this run, and why.

roles/internal_ca reads what is on disk (certificate and key of each identity, with
community.crypto's info filters) and asks :func:`internal_ca_issue` what to do with each
request; the decision lives here, tested in tests/unit/test_internal_ca_filter.py.

A certificate is
  renewed, with a new key pair: when forced, when it is revoked, or when less than a third
    of its lifetime remains (expired ones included);
  reissued with its key: when it is missing, when its request changed (subject, names), when
    the signing CA is another (a CA rotation's switch), or when it does not match its key (a
    renewal interrupted between key and certificate).
"""

from __future__ import annotations

import datetime

DOCUMENTATION = r"""
name: internal_ca_issue
short_description: The certificates to issue, each with whether it needs a new key and why
description:
  - "Takes the list of certificate requests (C(name), optional C(role), C(san)) and returns
    a dict C({name: {new_key: bool, why: str}}) for those to issue; the others are absent."
options:
  _input:
    description: The certificate requests.
    type: list
    elements: dict
    required: true
  found:
    description:
      - "By identity name, what is on disk: C({cert: <x509_certificate_info>,
        key: <openssl_privatekey_info>}); an identity missing either file is absent."
    type: dict
    required: true
  signer_key_id:
    description: Subject key identifier of the signing CA (empty when there is none yet).
    type: str
    required: true
  revoked:
    description: Revoked serial numbers (the ledger).
    type: list
    elements: int
    required: true
  forced:
    description: Identities to renew whatever their age.
    type: list
    elements: str
    required: true
  organization:
    description: The organization every certificate's subject carries.
    type: str
    required: true
  now:
    description: The time to decide at (UTC).
    type: raw
    required: true
"""

TIME_FORMAT = "%Y%m%d%H%M%SZ"


def _utc(value):
    """A naive UTC datetime from community.crypto's ASN.1 time string or a datetime."""
    if isinstance(value, str):
        return datetime.datetime.strptime(value, TIME_FORMAT)
    if value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


def subject_of(request, organization):
    subject = {"commonName": request["name"], "organizationName": organization}
    if request.get("role") is not None:
        subject["organizationalUnitName"] = request["role"]
    return subject


def renewal_reason(request, cert, key, *, signer_key_id, revoked, forced, organization, now):
    """``(new_key, why)`` for one existing certificate, or ``None`` when it stays."""
    not_before, not_after = _utc(cert["not_before"]), _utc(cert["not_after"])
    if request["name"] in forced:
        return True, "forced"
    if cert["serial_number"] in revoked:
        return True, "revoked"
    if (not_after - now).total_seconds() * 3 < (not_after - not_before).total_seconds():
        return True, f"expires at {cert['not_after']}, less than a third of its lifetime left"
    if cert["subject"] != subject_of(request, organization):
        return False, "subject changed"
    if sorted(cert.get("subject_alt_name") or []) != sorted(request.get("san") or []):
        return False, "names changed"
    if cert.get("authority_key_identifier") != signer_key_id:
        return False, "signed by another CA"
    if cert["public_key"] != key["public_key"]:
        return False, "does not match its key"
    return None


def internal_ca_issue(requests, found, signer_key_id, revoked, forced, organization, now):
    now = _utc(now)
    issue = {}
    for request in requests:
        on_disk = found.get(request["name"])
        if on_disk is None:
            issue[request["name"]] = {"new_key": False, "why": "new"}
            continue
        decided = renewal_reason(
            request,
            on_disk["cert"],
            on_disk["key"],
            signer_key_id=signer_key_id or "",
            revoked=set(revoked),
            forced=set(forced),
            organization=organization,
            now=now,
        )
        if decided is not None:
            issue[request["name"]] = {"new_key": decided[0], "why": decided[1]}
    return issue


class FilterModule:
    def filters(self):
        return {"internal_ca_issue": internal_ca_issue}
