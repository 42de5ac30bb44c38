"""How the ledger's refusals answer over HTTP, without a server: every refusal is declared,
and each keeps the status, type and field names the API has always answered with."""

from __future__ import annotations

import uuid

import pytest
from confide_consent.errors import (
    AccountIsClosed,
    CategoriesNotCovered,
    ConsentError,
    ConsentNotFound,
    PolicyHashMismatch,
    PurposeNeverAllowed,
    RecipientAlreadyRegistered,
    StalePolicyVersion,
    UnknownRecipient,
)
from confide_consent.problems import PROBLEM_TYPES
from confide_toolkit.problem import problem_type


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def answer(error: ConsentError) -> dict[str, object]:
    return PROBLEM_TYPES[type(error)].problem(error).to_dict()


def test_every_refusal_of_the_ledger_is_declared() -> None:
    # An undeclared refusal would answer a bare 500.
    assert every_subclass(ConsentError) <= PROBLEM_TYPES.keys()


def test_stale_policy_version_answers_409_naming_the_current_version() -> None:
    problem = answer(StalePolicyVersion("research", "2025-06", "2026-01"))
    assert problem["status"] == 409
    assert problem["type"] == problem_type("stale-policy-version")
    assert problem["current_policy_version"] == "2026-01"
    assert "errors" not in problem


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (ConsentNotFound(uuid.uuid4()), 404, "consent-not-found"),
        (PolicyHashMismatch("research", "2026-01"), 409, "policy-hash-mismatch"),
        (AccountIsClosed(uuid.uuid4()), 409, "account-is-closed"),
        (RecipientAlreadyRegistered(), 409, "recipient-already-registered"),
    ],
)
def test_missing_and_conflicting_answers_carry_no_field_errors(
    error: ConsentError, status: int, slug: str
) -> None:
    problem = answer(error)
    assert (problem["status"], problem["type"]) == (status, problem_type(slug))
    assert problem["detail"] == str(error)
    assert "errors" not in problem


@pytest.mark.parametrize(
    ("error", "field", "kind"),
    [
        (PurposeNeverAllowed("sell_data", "selling data"), "body.purpose", "purpose_never_allowed"),
        (CategoriesNotCovered("research", ["x"]), "body.data_categories", "categories_not_covered"),
    ],
)
def test_refused_fields_answer_422_named_as_request_validation_names_them(
    error: ConsentError, field: str, kind: str
) -> None:
    problem = answer(error)
    assert problem["status"] == 422
    assert problem["errors"] == [{"field": field, "message": str(error), "type": kind}]


def test_a_recipient_that_does_not_exist_answers_404_naming_the_field() -> None:
    problem = answer(UnknownRecipient(uuid.uuid4()))
    assert (problem["status"], problem["type"]) == (404, problem_type("unknown-recipient"))
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [e["field"] for e in errors] == ["body.recipient_id"]
