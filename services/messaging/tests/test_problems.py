"""How messaging's refusals answer over HTTP, without a server: every refusal is declared, and
each answers with the status, type and field name its clients rely on."""

from __future__ import annotations

import uuid

import pytest
from confide_messaging.domain import (
    ClientNotFound,
    ConsentRequired,
    ConversationClosed,
    ConversationNotFound,
    IdempotencyKeyReused,
    MessagingError,
    NotHeldHere,
    RecordsErased,
    TherapistNotAvailable,
)
from confide_messaging.problems import PROBLEM_TYPES
from confide_toolkit.problem import problem_type


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def answer(error: MessagingError) -> dict[str, object]:
    return PROBLEM_TYPES[type(error)].problem(error).to_dict()


def test_every_refusal_is_declared() -> None:
    # An undeclared refusal would answer a bare 500.
    assert every_subclass(MessagingError) <= PROBLEM_TYPES.keys()


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (ConversationNotFound(uuid.uuid4()), 404, "conversation-not-found"),
        (ClientNotFound(uuid.uuid4()), 404, "client-not-found"),
        (ConversationClosed(uuid.uuid4()), 409, "conversation-closed"),
        (RecordsErased("messaging.messages"), 409, "records-erased"),
        (ConsentRequired(uuid.uuid4()), 403, "consent-required"),
    ],
)
def test_refusals_without_a_field(error: MessagingError, status: int, slug: str) -> None:
    problem = answer(error)
    assert (problem["status"], problem["type"]) == (status, problem_type(slug))
    assert "errors" not in problem


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (NotHeldHere(["billing.payment_methods"]), "body.data_categories"),
        (IdempotencyKeyReused(), "header.Idempotency-Key"),
    ],
)
def test_refused_fields_are_named_as_request_validation_names_them(
    error: MessagingError, field: str
) -> None:
    problem = answer(error)
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]


def test_a_refusal_names_ids_never_what_was_written() -> None:
    problem = answer(ConversationNotFound(uuid.UUID(int=7)))
    assert problem["detail"] == f"There is no conversation {uuid.UUID(int=7)}."


def test_a_therapist_that_does_not_exist_answers_404_naming_the_field() -> None:
    problem = answer(TherapistNotAvailable(uuid.uuid4()))
    assert problem["status"] == 404
    assert [e["field"] for e in problem["errors"]] == ["body.therapist_id"]  # type: ignore[attr-defined]
