"""How the retention service's refusals answer over HTTP: one `ProblemType` per domain
exception, passed by app.py to `Service.create_app`.

Each answer's type URI ends in the kebab-cased class name unless a slug is given, and its
detail is the exception's message (pseudonymous ids only). An erasure case or a certificate the
caller may not see answers 404, exactly as one that does not exist. A person's own erasure
request with a stale sign-in answers 401 `fresh-sign-in-required`, with the RFC 9470 step-up
challenge (`insufficient_user_authentication`) and the `max_age` (seconds) a client acts on.
"""

from __future__ import annotations

from typing import Any

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_retention.domain import (
    CertificateNotFound,
    ErasureAlreadyRequested,
    ErasureCaseAlreadyPaused,
    ErasureCaseCompleted,
    ErasureCaseNotFound,
    ErasureCaseNotPaused,
    FreshSignInRequired,
    LegalHoldAlreadyReleased,
    LegalHoldNotFound,
    SubjectRequired,
)

_NOT_FOUND = ProblemType(404, "Not Found")


def _open_case(error: Any) -> dict[str, str]:
    return {"request_id": str(error.case_id)}


def _max_age(error: Any) -> dict[str, int]:
    return {"max_age": error.max_age_seconds}


PROBLEM_TYPES: ProblemTypes = {
    ErasureCaseNotFound: _NOT_FOUND,
    CertificateNotFound: _NOT_FOUND,
    LegalHoldNotFound: _NOT_FOUND,
    ErasureAlreadyRequested: ProblemType(
        409, "Erasure already requested", slug="erasure-already-requested", extensions=_open_case
    ),
    ErasureCaseCompleted: ProblemType(409, "Erasure complete", slug="erasure-complete"),
    ErasureCaseAlreadyPaused: ProblemType(409, "Conflict", slug="erasure-paused"),
    ErasureCaseNotPaused: ProblemType(409, "Conflict", slug="erasure-not-paused"),
    LegalHoldAlreadyReleased: ProblemType(409, "Conflict", slug="legal-hold-released"),
    FreshSignInRequired: ProblemType(
        401,
        "Fresh sign-in required",
        slug="fresh-sign-in-required",
        headers={"WWW-Authenticate": 'Bearer error="insufficient_user_authentication"'},
        extensions=_max_age,
    ),
    SubjectRequired: ProblemType(422, "Unprocessable Content"),
}
"""Every `RetentionError` the service raises, and how it answers."""
