"""How retention's refusals answer over HTTP, without a server: every refusal is declared, and
each answers with the status, type and field name its clients rely on."""

from __future__ import annotations

import uuid

import pytest
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
    RetentionError,
    SubjectRequired,
)
from confide_retention.problems import PROBLEM_TYPES
from confide_toolkit.problem import problem_type


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def answer(error: RetentionError) -> dict[str, object]:
    return PROBLEM_TYPES[type(error)].problem(error).to_dict()


def test_every_refusal_is_declared() -> None:
    # An undeclared refusal would answer a bare 500.
    assert every_subclass(RetentionError) <= PROBLEM_TYPES.keys()


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (ErasureCaseNotFound(uuid.uuid4()), 404, "erasure-case-not-found"),
        (CertificateNotFound(uuid.uuid4()), 404, "certificate-not-found"),
        (LegalHoldNotFound(uuid.uuid4()), 404, "legal-hold-not-found"),
        (ErasureAlreadyRequested(uuid.uuid4()), 409, "erasure-already-requested"),
        (ErasureCaseCompleted(uuid.uuid4()), 409, "erasure-complete"),
        (ErasureCaseAlreadyPaused(uuid.uuid4()), 409, "erasure-paused"),
        (ErasureCaseNotPaused(uuid.uuid4()), 409, "erasure-not-paused"),
        (LegalHoldAlreadyReleased(uuid.uuid4()), 409, "legal-hold-released"),
        (FreshSignInRequired(300), 401, "fresh-sign-in-required"),
    ],
)
def test_refusals_without_a_field(error: RetentionError, status: int, slug: str) -> None:
    problem = answer(error)
    assert (problem["status"], problem["type"]) == (status, problem_type(slug))
    assert "errors" not in problem


def test_a_stale_sign_in_says_how_fresh_it_must_be_and_challenges_the_client() -> None:
    error = FreshSignInRequired(300)
    problem = PROBLEM_TYPES[FreshSignInRequired].problem(error)
    assert problem.to_dict()["max_age"] == 300
    assert problem.headers["WWW-Authenticate"] == 'Bearer error="insufficient_user_authentication"'


def test_an_open_request_is_named_when_a_second_is_refused() -> None:
    case_id = uuid.uuid4()
    assert answer(ErasureAlreadyRequested(case_id))["request_id"] == str(case_id)


def test_compliance_must_name_the_person() -> None:
    problem = answer(SubjectRequired())
    assert problem["status"] == 422
    assert problem["errors"] == [
        {"field": "body.subject_id", "message": str(SubjectRequired()), "type": "subject_required"}
    ]
