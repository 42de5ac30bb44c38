"""Erasure certificates: what a person (or a regulator) keeps as proof that an erasure was done.

A certificate lists each category of the person's data: shredded (the owner's key id, by which
service, when), nothing held (the owner never had any), or retained (until when, and on what
legal ground); and `backups_clear_from`, the date from which no backup can bring the shredded
data back (the key-encryption-key versions that wrapped the keys are destroyed once the backup
retention window has passed). It is a compact JWS signed with retention's own Ed25519 key
(`typ: erasure-certificate+jwt`), verifiable offline with the keys served at
`GET /v1/signing-keys` (`confide_toolkit.signed_documents.verify_document`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

from confide_retention.domain import ErasureCase

CERTIFICATE_TYPE: Final = "erasure-certificate+jwt"
ISSUER: Final = "confide-retention"


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def certificate_claims(
    case: ErasureCase, certificate_id: UUID, issued_at: datetime, backups_clear_from: datetime
) -> dict[str, Any]:
    """The certificate's content for a settled case (pure data; signing is the toolkit's)."""
    categories = []
    for category, progress in case.categories.items():
        answer = progress.answer
        entry: dict[str, Any] = {"category": category, "policy": progress.plan.policy}
        if answer is not None:
            entry.update(
                outcome=answer.outcome,
                key_id=None if answer.key_id is None else str(answer.key_id),
                by=answer.answered_by,
                at=_time(answer.answered_at),
            )
        else:
            entry.update(
                outcome="retained",
                retained_until=_time(progress.plan.due_at),
                retained_on="legal_obligation",
                ground=progress.plan.legal_obligation,
            )
        categories.append(entry)
    return {
        "iss": ISSUER,
        "jti": str(certificate_id),
        "sub": str(case.subject_id),
        "iat": int(issued_at.timestamp()),
        "certificate_id": str(certificate_id),
        "erasure_case_id": str(case.case_id),
        "origin": case.origin,
        "requested_at": _time(case.requested_at),
        "issued_at": _time(issued_at),
        "categories": categories,
        "backups_clear_from": _time(backups_clear_from),
    }
