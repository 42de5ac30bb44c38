"""How audit's refusals answer over HTTP, without a server: every refusal is declared, and each
answers with the status, type and field name its clients rely on."""

from __future__ import annotations

import uuid

from confide_audit.domain import AuditError, SubjectNotFound
from confide_audit.problems import PROBLEM_TYPES
from confide_toolkit.problem import problem_type


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


def answer(error: AuditError) -> dict[str, object]:
    return PROBLEM_TYPES[type(error)].problem(error).to_dict()


def test_every_refusal_is_declared() -> None:
    # An undeclared refusal would answer a bare 500.
    assert every_subclass(AuditError) <= PROBLEM_TYPES.keys()


def test_a_person_the_trail_does_not_know_answers_404_naming_only_the_id() -> None:
    subject = uuid.UUID(int=7)
    problem = answer(SubjectNotFound(subject))
    assert (problem["status"], problem["type"]) == (404, problem_type("subject-not-found"))
    assert problem["detail"] == f"The trail holds no event about subject {subject}."
