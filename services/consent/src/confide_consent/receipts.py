"""Consent receipts: what a person (or a regulator) can keep as proof of a grant.

The fields follow the Kantara Initiative Consent Receipt Specification v1.1 (`version`,
`jurisdiction`, `consentTimestamp`, `collectionMethod`, `consentReceiptID`, `piiPrincipalId`,
`piiControllers`, `policyUrl`, `services[].purposes[]` with `piiCategory`, `thirdPartyName`,
...), plus the ledger's exact record of the grant under `consent` (consent id, purpose code,
recipient id, categories, policy version and SHA-256 of its text, time, method).

A receipt is a compact JWS (RFC 7515) signed with the consent service's Ed25519 key
(`alg: EdDSA`, `typ: consent-receipt+jwt`, `kid` in the header). Anyone can verify it with the
public keys served at `GET /v1/receipt-keys`, with `verify_receipt` or any JOSE library; a
receipt whose payload or signature was altered does not verify.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import jwt
from confide_toolkit.auth import key_from_jwk
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from confide_consent.domain import Consent, Recipient
from confide_consent.purposes import PURPOSES

RECEIPT_TYPE: Final = "consent-receipt+jwt"
ALGORITHM: Final = "EdDSA"
KANTARA_VERSION: Final = "KI-CR-v1.1.0"


class ReceiptInvalid(Exception):
    """The receipt does not verify: altered, malformed, or signed by an unknown key."""


@dataclass(frozen=True)
class ReceiptIssuer:
    """Who issues receipts, as the receipt names them (from the settings)."""

    controller: str
    contact: str
    jurisdiction: str
    language: str = "en"


def receipt_claims(
    consent: Consent, receipt_id: UUID, recipient: Recipient | None, issuer: ReceiptIssuer
) -> dict[str, Any]:
    """The receipt's content for a grant (pure data; signing is `sign_receipt`)."""
    purpose = PURPOSES[consent.purpose]
    granted_at = consent.granted_at
    return {
        "version": KANTARA_VERSION,
        "jurisdiction": issuer.jurisdiction,
        "consentTimestamp": int(granted_at.timestamp()),
        "collectionMethod": consent.method,
        "consentReceiptID": str(receipt_id),
        "language": issuer.language,
        "piiPrincipalId": str(consent.subject_id),
        "piiControllers": [{"piiController": issuer.controller, "contact": issuer.contact}],
        "policyUrl": f"/v1/purposes/{consent.purpose}/policies/{consent.policy_version}",
        "services": [
            {
                "service": issuer.controller,
                "purposes": [
                    {
                        "purpose": purpose.title,
                        "purposeCategory": [purpose.code],
                        "consentType": "EXPLICIT",
                        "piiCategory": list(consent.data_categories),
                        "primaryPurpose": False,
                        "termination": "until withdrawn by the person, or their account closes",
                        "thirdPartyDisclosure": recipient is not None,
                        "thirdPartyName": recipient.name if recipient is not None else None,
                    }
                ],
            }
        ],
        "sensitive": True,
        "spiCat": ["health"],
        "consent": {
            "consent_id": str(consent.consent_id),
            "subject_id": str(consent.subject_id),
            "purpose": consent.purpose,
            "recipient_id": str(consent.recipient_id) if consent.recipient_id else None,
            "data_categories": list(consent.data_categories),
            "policy_version": consent.policy_version,
            "policy_hash": consent.policy_hash,
            "granted_at": granted_at.isoformat().replace("+00:00", "Z"),
            "method": consent.method,
        },
    }


def sign_receipt(claims: Mapping[str, Any], private_key: Ed25519PrivateKey, kid: str) -> str:
    """The receipt as a compact JWS signed with the service's receipt key."""
    return jwt.encode(
        dict(claims), private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": RECEIPT_TYPE}
    )


def verify_receipt(jws: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The claims of a receipt whose signature verifies under one of the keys of `jwks` (a JWKS
    document, `{"keys": [...]}`, as `GET /v1/receipt-keys` serves it).

    Raises `ReceiptInvalid` when it does not."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError as error:
        raise ReceiptInvalid("not a JWS") from error
    if header.get("alg") != ALGORITHM or header.get("typ") != RECEIPT_TYPE:
        raise ReceiptInvalid("not a consent receipt")
    jwk = next((k for k in jwks.get("keys", ()) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise ReceiptInvalid("signed by an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            jws,
            key_from_jwk(jwk),
            algorithms=[ALGORITHM],
            # A receipt is proof of a past event: it does not expire.
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except (jwt.PyJWTError, ValueError) as error:
        raise ReceiptInvalid("the signature does not verify") from error
    return claims


def receipt_payload(jws: str) -> dict[str, Any]:
    """The claims of a receipt without checking its signature: for display only (the receipt
    this service just read from its own ledger); anyone relying on it calls `verify_receipt`.

    Read by hand, the middle segment decoded: PyJWT checks each character of the whole JWS in
    Python first, a tenth of a grant's CPU for a receipt this service signed itself."""
    payload = jws.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims
