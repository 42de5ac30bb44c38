"""The policies and the erasure case's decisions, without I/O."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confide_retention.domain import (
    ErasureCase,
    ErasureCaseAlreadyPaused,
    ErasureCaseCompleted,
    ErasureCaseNotPaused,
    PlannedCategory,
)
from confide_retention.policies import (
    DEFAULT_POLICIES_FILE,
    InvalidPolicy,
    RetentionPeriod,
    load_policies,
)

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_periods_are_iso_8601_durations_with_calendar_years() -> None:
    assert RetentionPeriod.parse("PT2S").after(T) == T + timedelta(seconds=2)
    assert RetentionPeriod.parse("P30D").after(T) == T + timedelta(days=30)
    assert RetentionPeriod.parse("PT0S").after(T) == T
    # Seven calendar years, never a day short as 7 x 365 days would be.
    assert RetentionPeriod.parse("P7Y").after(T) == T.replace(year=2033)
    leap = datetime(2024, 2, 29, tzinfo=UTC)
    assert RetentionPeriod.parse("P1Y").after(leap) == datetime(2025, 2, 28, tzinfo=UTC)
    assert RetentionPeriod.parse("P1M").after(datetime(2026, 1, 31, tzinfo=UTC)) == datetime(
        2026, 2, 28, tzinfo=UTC
    )
    for bad in ("30 days", "P", "PT", "P1H", "-P1D", ""):
        with pytest.raises(InvalidPolicy):
            RetentionPeriod.parse(bad)


def test_the_default_policies_are_designs() -> None:
    policies = load_policies()
    assert policies.version == "2026-11"
    assert policies["identity.profile"].keep_for.text == "P30D"
    assert policies["messaging.session_notes"].legal_obligation == "clinical_record"
    assert policies["billing.financial_records"].legal_obligation == "tax_law"
    assert policies["billing.payment_methods"].keep_for.after(T) == T
    assert policies["identity.profile"].code == "identity.profile.v1"


def test_a_policy_runs_from_the_latest_of_its_facts_and_may_wait_for_the_closure() -> None:
    policies = load_policies()
    notes = policies["messaging.session_notes"]
    assert notes.due_at({"last_note": T}) is None  # the account is still open
    closed = T + timedelta(days=10)
    assert notes.due_at({"last_note": T, "account_closed": closed}) == closed.replace(year=2033)
    late_note = closed + timedelta(days=5)
    assert notes.due_at({"last_note": late_note, "account_closed": closed}) == late_note.replace(
        year=2033
    )
    cards = policies["billing.payment_methods"]
    assert cards.due_at({"card_removed": T}) == T  # needs no closure
    assert policies["identity.profile"].due_at({"last_note": T}) is None


def test_an_erasure_request_ends_the_relationship_for_the_legal_end() -> None:
    notes = load_policies()["messaging.session_notes"]
    assert notes.legal_end({"last_note": T}, T + timedelta(days=1)) == (
        T + timedelta(days=1)
    ).replace(year=2033)


def test_overrides_use_seconds_and_say_so_in_the_code(tmp_path: Path) -> None:
    policies = load_policies(periods={"identity.profile": "PT2S"})
    assert policies.version == "2026-11+local"
    assert policies["identity.profile"].due_at({"account_closed": T}) == T + timedelta(seconds=2)
    assert policies["identity.profile"].code == "identity.profile.v1.local"
    assert policies["messaging.messages"].code == "messaging.messages.v1"
    with pytest.raises(InvalidPolicy):
        load_policies(periods={"identity.passwords": "PT2S"})
    document = json.loads(DEFAULT_POLICIES_FILE.read_text())
    document["policies"] = document["policies"][1:]
    incomplete = tmp_path / "policies.json"
    incomplete.write_text(json.dumps(document))
    with pytest.raises(InvalidPolicy, match=r"identity\.profile"):
        load_policies(incomplete)


def _case() -> ErasureCase:
    plan = [
        PlannedCategory(category="identity.profile", policy="identity.profile.v1", due_at=T),
        PlannedCategory(
            category="messaging.session_notes",
            policy="messaging.session_notes.v1",
            due_at=T.replace(year=2033),
            legal_obligation="clinical_record",
        ),
    ]
    return ErasureCase.open(uuid.uuid4(), uuid.uuid4(), "subject_request", uuid.uuid4(), T, plan)


def test_a_case_settles_once_each_category_is_answered_or_retained() -> None:
    case = _case()
    assert not case.settled
    # An answer to an expiry never emitted for this case is not this case's answer.
    assert not case.record_answer("identity.profile", "shredded", uuid.uuid4(), "identity", T)
    case.record_emission("identity.profile", T)
    case.record_emission("identity.profile", T + timedelta(minutes=5))
    key = uuid.uuid4()
    assert case.record_answer("identity.profile", "shredded", key, "identity", T)
    assert not case.record_answer("identity.profile", "shredded", uuid.uuid4(), "identity", T)
    assert case.settled
    steps = [e.step for e in case.categories["identity.profile"].log]
    assert steps == ["requested", "emitted", "retried", "acknowledged"]
    outcomes = {o.category: o for o in case.outcomes()}
    assert outcomes["identity.profile"].key_id == key
    assert outcomes["messaging.session_notes"].outcome == "retained"
    assert outcomes["messaging.session_notes"].retained_until == T.replace(year=2033)

    case.close(uuid.uuid4(), T + timedelta(days=65), T)
    assert case.status == "completed"
    with pytest.raises(ErasureCaseCompleted):
        case.pause(uuid.uuid4(), T)


def test_a_case_replays_to_the_same_state() -> None:
    case = _case()
    case.record_emission("identity.profile", T)
    case.pause(uuid.uuid4(), T)
    events = list(case.pending)
    replayed = ErasureCase.replay(case.case_id, events, len(events))
    assert replayed.status == "paused"
    assert replayed.categories["identity.profile"].attempts == 1
    assert replayed.subject_id == case.subject_id


def test_pause_and_resume_refuse_what_makes_no_sense() -> None:
    case = _case()
    with pytest.raises(ErasureCaseNotPaused):
        case.resume(uuid.uuid4(), T)
    case.pause(uuid.uuid4(), T)
    with pytest.raises(ErasureCaseAlreadyPaused):
        case.pause(uuid.uuid4(), T)
    case.resume(uuid.uuid4(), T)
    assert case.status == "open"
