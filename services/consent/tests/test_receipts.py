"""Consent receipts: signed, verifiable with the public key alone, and tamper-evident."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from confide_consent.domain import Consent, Recipient
from confide_consent.receipts import (
    ReceiptInvalid,
    ReceiptIssuer,
    receipt_claims,
    receipt_payload,
    sign_receipt,
    verify_receipt,
)
from confide_toolkit.auth import public_jwk
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = ReceiptIssuer(controller="Confide", contact="privacy@confide.dev", jurisdiction="EU")
KEY = Ed25519PrivateKey.generate()
JWKS = {"keys": [public_jwk(KEY, "k1")]}
CLINIC = Recipient(
    uuid.uuid4(), "Northside Clinic", "healthcare_provider", ("share_with_provider",)
)


def consent() -> Consent:
    return Consent(
        consent_id=uuid.uuid4(),
        subject_id=uuid.uuid4(),
        purpose="share_with_provider",
        recipient_id=CLINIC.recipient_id,
        data_categories=("messaging.session_notes",),
        policy_version="2026-01",
        policy_hash="a" * 64,
        method="mobile_app",
        granted_at=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
    )


def test_receipt_carries_the_kantara_fields_of_the_grant() -> None:
    granted = consent()
    receipt_id = uuid.uuid4()
    claims = receipt_claims(granted, receipt_id, CLINIC, ISSUER)
    assert claims["consentReceiptID"] == str(receipt_id)
    assert claims["piiPrincipalId"] == str(granted.subject_id)
    assert claims["collectionMethod"] == "mobile_app"
    assert claims["consentTimestamp"] == int(granted.granted_at.timestamp())
    purpose = claims["services"][0]["purposes"][0]
    assert purpose["thirdPartyName"] == "Northside Clinic"
    assert purpose["piiCategory"] == ["messaging.session_notes"]
    assert claims["consent"]["policy_hash"] == "a" * 64


def test_signed_receipt_verifies_with_the_public_key() -> None:
    claims = receipt_claims(consent(), uuid.uuid4(), CLINIC, ISSUER)
    assert verify_receipt(sign_receipt(claims, KEY, "k1"), JWKS) == claims


def test_the_payload_shown_beside_a_receipt_is_its_signed_claims() -> None:
    clinic = Recipient(uuid.uuid4(), "Clinique Saint-Élie", "healthcare_provider", ())
    claims = receipt_claims(consent(), uuid.uuid4(), clinic, ISSUER)
    assert receipt_payload(sign_receipt(claims, KEY, "k1")) == claims


def _tamper(jws: str, **changes: object) -> str:
    header, payload, signature = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_altered_receipt_does_not_verify() -> None:
    jws = sign_receipt(receipt_claims(consent(), uuid.uuid4(), CLINIC, ISSUER), KEY, "k1")
    with pytest.raises(ReceiptInvalid):
        verify_receipt(_tamper(jws, piiPrincipalId=str(uuid.uuid4())), JWKS)


def test_receipt_signed_by_another_key_does_not_verify() -> None:
    claims = receipt_claims(consent(), uuid.uuid4(), CLINIC, ISSUER)
    forged = sign_receipt(claims, Ed25519PrivateKey.generate(), "k1")
    with pytest.raises(ReceiptInvalid):
        verify_receipt(forged, JWKS)
    with pytest.raises(ReceiptInvalid):
        verify_receipt(sign_receipt(claims, KEY, "unknown"), JWKS)
