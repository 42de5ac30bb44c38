"""How identity's refusals answer over HTTP, without a server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from confide_identity import domain
from confide_identity.problems import PROBLEM_TYPES
from confide_toolkit.problem import Problem


def answer(error: Exception) -> Problem:
    return PROBLEM_TYPES[type(error)].problem(error)


def _refusals(cls: type[domain.IdentityError]) -> list[type[domain.IdentityError]]:
    return [c for sub in cls.__subclasses__() for c in [sub, *_refusals(sub)]]


@pytest.mark.parametrize(
    "refusal", [c for c in _refusals(domain.IdentityError) if c is not domain.AccountError]
)
def test_every_refusal_has_its_own_problem_type(refusal: type[domain.IdentityError]) -> None:
    assert refusal in PROBLEM_TYPES


def test_a_refused_field_is_named_by_its_place_in_the_request() -> None:
    problem = answer(domain.InvalidField("email", "Not a valid email address.", "email_invalid"))

    assert (problem.status, problem.slug) == (422, "validation-error")
    assert problem.extensions["errors"] == [
        {"field": "body.email", "message": "Not a valid email address.", "type": "email_invalid"}
    ]


def test_a_refused_password_lists_each_violation_under_its_field() -> None:
    violations = [
        domain.PolicyViolation("Use at least 12 characters.", "password_too_short"),
        domain.PolicyViolation("Use more than a few different characters.", "password_repetitive"),
    ]

    problem = answer(domain.PasswordRefused("new_password", violations))

    assert (problem.status, problem.slug) == (422, "password-refused")
    assert [(e["field"], e["type"]) for e in problem.extensions["errors"]] == [
        ("body.new_password", "password_too_short"),
        ("body.new_password", "password_repetitive"),
    ]


def test_locks_say_when_to_try_again() -> None:
    locked = answer(domain.SignInLocked(timedelta(seconds=899.2)))
    throttled = answer(domain.TooManySignInAttempts(timedelta(minutes=15)))

    assert (locked.status, locked.slug, locked.headers) == (
        429,
        "sign-in-locked",
        {"Retry-After": "900"},
    )
    assert (throttled.status, throttled.slug, throttled.headers) == (
        429,
        "too-many-sign-in-attempts",
        {"Retry-After": "900"},
    )


@pytest.mark.parametrize(
    "refusal",
    [
        domain.InvalidCredentials(),
        domain.TotpRequired(),
        domain.InvalidTotpCode(),
        domain.InvalidRefreshToken(),
    ],
)
def test_refused_credentials_answer_401_with_a_bearer_challenge(
    refusal: domain.IdentityError,
) -> None:
    problem = answer(refusal)
    assert (problem.status, problem.headers) == (401, {"WWW-Authenticate": "Bearer"})
