"""Processes die under load and come back: nothing acknowledged is lost, nothing applied twice.

Each scenario runs every service it needs as its own process (`python -m confide_<name>`) on
the real broker and database, puts steady load on it through the public HTTP API for a bounded
time, injects its fault, and hands what was acknowledged to the checker (checker.py), which
reads the effects from the topics from offset 0. The figures land in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from confide_events.topics import CONSENT_EVENTS, IDENTITY_EVENTS
from confide_testing.processes import ServiceProcess, ServiceProcesses

from .checker import (
    VERDICTS,
    Verdict,
    assert_nothing_lost_or_doubled,
    count_effects,
    count_out_of_order,
    settled_topic,
    tally_into,
    write_verdict,
)
from .load import Tally, after_fault, clients_with_consents, register, retry, steady

pytestmark = pytest.mark.integration


async def test_sigkill_of_a_producing_service_mid_stream_loses_no_acknowledged_event(
    processes: ServiceProcesses,
    kafka_bootstrap: str,
) -> None:
    identity = processes.start("identity")
    tally = Tally()
    run = uuid.uuid4().hex[:8]

    async with httpx.AsyncClient(timeout=10) as http:

        async def registration(n: int) -> None:
            await register(http, identity.url, f"kill-{run}-{n}@example.org", tally)

        async def kill_and_restart() -> None:
            identity.kill()  # SIGKILL: the relay inside dies with whatever it had in flight
            await asyncio.to_thread(identity.start)

        stop = asyncio.Event()
        await asyncio.gather(
            steady(stop, 4, registration),
            after_fault(stop, kill_and_restart(), before=5, after=5),
        )

    acknowledged = set(tally.acknowledged.values())
    events = await settled_topic(
        kafka_bootstrap,
        IDENTITY_EVENTS,
        lambda events: acknowledged <= {e.subject for e in events if e.type == "UserRegistered"},
    )
    verdict = Verdict(
        scenario="sigkill-producer",
        load="4 clients registering accounts: 5 s, the fault, 5 s after the restart",
        faults="identity (its relay inside) SIGKILLed at 5 s, restarted",
    )
    tally_into(verdict, tally)
    count_effects(
        verdict, acknowledged, events, event_type="UserRegistered", value_of=lambda e: e.subject
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)


async def _consents_withdrawn_on_closing_under(
    fault: Callable[[], Awaitable[None]],
    identity: ServiceProcess,
    consent: ServiceProcess,
    kafka_bootstrap: str,
    verdict: Verdict,
    people: int = 24,
) -> None:
    """`people` clients each grant a consent, then all close their accounts while `fault`
    strikes consent; every acknowledged closing must withdraw its consent exactly once."""
    async with httpx.AsyncClient(timeout=15) as http:
        clients = await clients_with_consents(http, identity.url, consent.url, people)
        tally = Tally()

        async def close(auth: dict[str, str], consent_id: str) -> None:
            tally.attempted += 1
            answer = await retry(
                "close",
                lambda: http.post(f"{identity.url}/v1/accounts/me/close", headers=auth),
                202,
            )
            tally.answer(answer.status_code)
            tally.acknowledged[consent_id] = consent_id

        async def paced_closes() -> None:
            closing = []
            for _, auth, consent_id in clients:
                closing.append(asyncio.create_task(close(auth, consent_id)))
                await asyncio.sleep(0.25)
            await asyncio.gather(*closing)

        await asyncio.gather(paced_closes(), fault())

    acknowledged = set(tally.acknowledged)
    subjects = {user_id for user_id, _, _ in clients}
    events = await settled_topic(
        kafka_bootstrap,
        CONSENT_EVENTS,
        lambda events: (
            acknowledged
            <= {str(e.data.get("consent_id")) for e in events if e.type == "ConsentRevoked"}
        ),
    )
    tally_into(verdict, tally)
    count_effects(
        verdict,
        acknowledged,
        events,
        event_type="ConsentRevoked",
        value_of=lambda e: str(e.data.get("consent_id")),
    )
    count_out_of_order(verdict, events, subjects, ["ConsentGranted", "ConsentRevoked"])


async def test_sigkill_of_a_consuming_service_mid_batch_applies_each_event_once(
    processes: ServiceProcesses,
    kafka_bootstrap: str,
) -> None:
    identity = processes.start("identity")
    consent = processes.start("consent")

    async def kill_and_restart() -> None:
        await asyncio.sleep(2.5)
        consent.kill()
        await asyncio.to_thread(consent.start)

    verdict = Verdict(
        scenario="sigkill-consumer",
        load="24 clients closing their accounts, 4 per second, each with a consent",
        faults="consent SIGKILLed mid-stream at 2.5 s, restarted",
    )
    await _consents_withdrawn_on_closing_under(
        kill_and_restart, identity, consent, kafka_bootstrap, verdict
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)


async def test_a_consumer_stopped_past_its_session_timeout_applies_nothing_its_successor_did(
    processes: ServiceProcesses,
    kafka_bootstrap: str,
) -> None:
    identity = processes.start("identity")
    consent = processes.start("consent")
    successor = processes.start("consent", like=consent)

    async def stop_then_continue() -> None:
        await asyncio.sleep(1.5)
        consent.signal(signal.SIGSTOP)
        # Past the group's session timeout: the successor is given the partitions.
        await asyncio.sleep(16)
        consent.signal(signal.SIGCONT)

    verdict = Verdict(
        scenario="sigstop-consumer",
        load="24 clients closing their accounts, 4 per second; two consent replicas",
        faults="one consent replica SIGSTOPped for 16 s (past its session timeout), SIGCONT",
    )
    await _consents_withdrawn_on_closing_under(
        stop_then_continue, identity, successor, kafka_bootstrap, verdict
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)


async def test_two_consumer_replicas_one_killed_the_other_takes_over(
    processes: ServiceProcesses,
    kafka_bootstrap: str,
) -> None:
    identity = processes.start("identity")
    consent = processes.start("consent")
    other = processes.start("consent", like=consent)

    async def kill_one() -> None:
        await asyncio.sleep(2.5)
        consent.kill()  # not restarted: the other replica must take its partitions

    verdict = Verdict(
        scenario="consumer-replicas",
        load="24 clients closing their accounts, 4 per second; two consent replicas",
        faults="one consent replica SIGKILLed at 2.5 s, not restarted",
    )
    await _consents_withdrawn_on_closing_under(kill_one, identity, other, kafka_bootstrap, verdict)
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)


async def test_two_producer_replicas_one_relay_publishes_and_the_other_takes_over(
    processes: ServiceProcesses,
    kafka_bootstrap: str,
) -> None:
    first = processes.start("identity")
    second = processes.start("identity", like=first)

    def relay_of(service: ServiceProcess) -> str:
        return str(httpx.get(f"{service.url}/readyz", timeout=5).json()["relay"])

    relays = {relay_of(first), relay_of(second)}
    assert relays == {"active", "standby"}, relays
    holder, survivor = (first, second) if relay_of(first) == "active" else (second, first)
    tally = Tally()
    run = uuid.uuid4().hex[:8]
    took_over_after: list[float] = []

    async with httpx.AsyncClient(timeout=10) as http:

        async def registration(n: int) -> None:
            # Both replicas take requests, as behind a load balancer; the holder dies.
            target = survivor if n % 2 else holder
            await register(http, target.url, f"replica-{run}-{n}@example.org", tally)

        async def kill_holder() -> None:
            holder.kill()
            killed_at = time.monotonic()
            while relay_of(survivor) != "active" and time.monotonic() < killed_at + 60:
                await asyncio.sleep(0.2)
            took_over_after.append(time.monotonic() - killed_at)

        stop = asyncio.Event()
        await asyncio.gather(
            steady(stop, 4, registration), after_fault(stop, kill_holder(), before=4, after=4)
        )

    acknowledged = set(tally.acknowledged.values())
    events = await settled_topic(
        kafka_bootstrap,
        IDENTITY_EVENTS,
        lambda events: acknowledged <= {e.subject for e in events if e.type == "UserRegistered"},
    )
    verdict = Verdict(
        scenario="producer-replicas",
        load="4 clients registering through two identity replicas: 4 s, the fault, 4 s after",
        faults=f"the relay holder SIGKILLed at 4 s; the other took over in "
        f"{took_over_after[0]:.1f} s",
    )
    tally_into(verdict, tally)
    count_effects(
        verdict, acknowledged, events, event_type="UserRegistered", value_of=lambda e: e.subject
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)
    assert took_over_after[0] < 30, "the standby relay did not take over within seconds"
