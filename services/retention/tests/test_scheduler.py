"""The scheduler against the real database and broker, with a `FrozenClock`: the clocks the
owners' facts start, what falls due while no scheduler runs (it fires when one is back), and
several schedulers at once (every due expiry goes out exactly once)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta

from confide_events import billing, messaging
from confide_events.topics import BILLING_EVENTS, MESSAGING_EVENTS
from confide_retention.scheduler import Scheduler
from confide_retention.store import ErasureCases
from confide_toolkit.database import create_engine
from confide_toolkit.outbox import Outbox

from .conftest import ANSWER_TIMEOUT, RetentionService, TopicTap


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_an_account_closure_starts_the_clocks_of_its_policies(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    closed_at = retention.clock.now()
    await retention.close_account(person, closed_at)

    # Card data goes at once (period 0); the profile and messages after their 60 s.
    await retention_events.wait_for(
        "confide.retention.RetentionExpired", lambda _: bool(retention_events.expiries_of(person))
    )
    # Answered as billing would (else it is emitted again once the answer timeout passes).
    await retention.answer(person, "billing.payment_methods", "nothing_held")
    await retention.until_answered(person, "billing.payment_methods")
    await retention.advance(timedelta(seconds=59))
    await retention_events.quiet_for(1.0)
    assert [e["category"] for e in retention_events.expiries_of(person)] == [
        "billing.payment_methods"
    ]
    await retention.advance(timedelta(seconds=2))
    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: len(retention_events.expiries_of(person)) == 3,
    )
    profile = next(
        e for e in retention_events.expiries_of(person) if e["category"] == "identity.profile"
    )
    assert profile["policy"] == "identity.profile.v1.local"
    assert _time(profile["due_at"]) == closed_at + timedelta(seconds=60)
    assert profile["erasure_case_id"] is None


async def test_notes_are_kept_from_the_later_of_the_last_note_and_the_closure(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    noted_at = retention.clock.now() + timedelta(minutes=30)
    await retention.publish(
        MESSAGING_EVENTS,
        messaging.SessionNoteRecorded(
            note_id=uuid.uuid4(),
            conversation_id=uuid.uuid4(),
            subject_id=person,
            therapist_id=uuid.uuid4(),
            recorded_at=noted_at,
        ),
    )
    await retention.until_clock(person, "last_note")
    await retention.close_account(person)

    # Closed now, last note 30 min from now: kept until an hour after the note.
    await retention.advance(timedelta(hours=1, minutes=29))
    await retention_events.quiet_for(1.0)
    assert "messaging.session_notes" not in {
        e["category"] for e in retention_events.expiries_of(person)
    }
    await retention.advance(timedelta(minutes=2))
    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: (
            "messaging.session_notes"
            in {e["category"] for e in retention_events.expiries_of(person)}
        ),
    )


async def test_card_data_expires_when_the_last_card_is_removed(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    now = retention.clock.now()
    await retention.publish(
        BILLING_EVENTS,
        billing.PaymentMethodAdded(
            payment_method_id=first, subject_id=person, brand="visa", added_at=now
        ),
        billing.PaymentMethodAdded(
            payment_method_id=second, subject_id=person, brand="amex", added_at=now
        ),
        billing.PaymentMethodRemoved(payment_method_id=first, subject_id=person, removed_at=now),
    )
    await retention_events.quiet_for(1.5)
    assert retention_events.expiries_of(person) == []  # a card is left

    await retention.publish(
        BILLING_EVENTS,
        billing.PaymentMethodRemoved(payment_method_id=second, subject_id=person, removed_at=now),
    )
    await retention_events.wait_for(
        "confide.retention.RetentionExpired", lambda _: bool(retention_events.expiries_of(person))
    )
    await retention_events.quiet_for(0.5)
    [expiry] = retention_events.expiries_of(person)
    assert expiry["category"] == "billing.payment_methods"


async def test_what_fell_due_while_no_scheduler_ran_goes_out_once_with_several_running(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    people = [uuid.uuid4() for _ in range(20)]
    await retention.deps.scheduler.stop()  # the service is "down"
    replicas: list[Scheduler] = []
    engines = []
    try:
        for person in people:
            await retention.close_account(person)
        # A day passes while nothing runs: every category of every person falls due.
        retention.clock.advance(timedelta(days=1))
        await retention_events.quiet_for(1.0)
        assert not any(retention_events.expiries_of(p) for p in people)

        # Back with three schedulers at once: the service's and two more replicas, each with
        # its own connections, racing over the same rows.
        settings = retention.app.state.service.settings
        for _ in range(2):
            engine = create_engine(settings.database_url)
            engines.append(engine)
            replicas.append(
                Scheduler(
                    engine,
                    ErasureCases(retention.clock),
                    Outbox("retention", retention.clock, topic=retention.topic),
                    retention.clock,
                    answer_timeout=ANSWER_TIMEOUT,
                    batch_size=7,
                )
            )
        retention.deps.scheduler.start()
        emitted = await asyncio.gather(*(replica.emit_all_due() for replica in replicas))

        def every_one_out(_: object) -> bool:
            return sum(len(retention_events.expiries_of(p)) for p in people) >= 100

        await retention_events.wait_for("confide.retention.RetentionExpired", every_one_out)
        await retention_events.quiet_for(1.0)
    finally:
        for engine in engines:
            await engine.dispose()
        if not retention.deps.scheduler.running:
            retention.deps.scheduler.start()

    sent = Counter(
        (e["subject_id"], e["category"]) for p in people for e in retention_events.expiries_of(p)
    )
    assert len(sent) == 100  # 20 people, 5 categories
    assert set(sent.values()) == {1}
    assert sum(emitted) <= 100


class _CountingScheduler(Scheduler):
    """Passes counted instead of run; the first pass is woken during itself, as by a request
    committing while a pass is under way."""

    def __init__(self) -> None:
        super().__init__(
            engine=None,  # type: ignore[arg-type]
            cases=None,  # type: ignore[arg-type]
            outbox=None,  # type: ignore[arg-type]
            clock=None,  # type: ignore[arg-type]
            answer_timeout=timedelta(minutes=5),
            interval=3600.0,
        )
        self.passes = 0
        self.second_pass = asyncio.Event()

    async def emit_all_due(self) -> int:
        self.passes += 1
        if self.passes == 1:
            self.wake()
        else:
            self.second_pass.set()
        return 0


async def test_a_wake_up_during_a_pass_runs_another_pass_at_once() -> None:
    # Else a request that commits during a pass waits a whole interval (an hour here).
    scheduler = _CountingScheduler()
    scheduler.start()
    try:
        await asyncio.wait_for(scheduler.second_pass.wait(), timeout=30)
    finally:
        await scheduler.stop()
    assert scheduler.passes >= 2
