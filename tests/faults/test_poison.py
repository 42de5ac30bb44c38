"""A poison record goes to its topic's `.dlq`, the rest flows on, and an operator replays it
from there once the cause is fixed: applied once, however often the replay runs."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import psycopg
import pytest
from confide_events.topics import CONSENT_EVENTS, IDENTITY_EVENTS, dead_letter_topic
from confide_testing.processes import ServiceProcess, ServiceProcesses

from .checker import (
    VERDICTS,
    TopicEvent,
    Verdict,
    assert_nothing_lost_or_doubled,
    count_effects,
    read_topic,
    settled_topic,
    write_verdict,
)
from .load import Tally, clients_with_consents, retry

pytestmark = pytest.mark.integration


def _sql(service: ServiceProcess, statement: str) -> None:
    url = service.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _poison(consent: ServiceProcess, subject_id: str) -> None:
    """A fault in the data of one person: consent cannot record anything for them (a broken
    trigger, as a bad migration would leave), until an operator drops it."""
    _sql(
        consent,
        f"""CREATE FUNCTION poisoned() RETURNS trigger AS $$
            BEGIN
              IF NEW.stream_id = '{uuid.UUID(subject_id)}' THEN
                RAISE EXCEPTION 'poisoned record of the fault scenario';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER poisoned BEFORE INSERT ON stored_events
              FOR EACH ROW EXECUTE FUNCTION poisoned();""",
    )


def _dead_letters(command: str, consent: ServiceProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "confide_toolkit.dead_letters", command, "consent"],
        env=consent.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_a_poison_record_is_dead_lettered_and_replayed_once_after_the_fix(
    processes: ServiceProcesses, kafka_bootstrap: str
) -> None:
    identity = processes.start("identity")
    consent = processes.start("consent", {"CONFIDE_CONSUMER_RETRY_ATTEMPTS": "2"})
    async with httpx.AsyncClient(timeout=15) as http:
        clients = await clients_with_consents(http, identity.url, consent.url, 6)
        poisoned_subject, _, poisoned_consent = clients[0]
        _poison(consent, poisoned_subject)
        tally = Tally()
        for _, auth, consent_id in clients:
            tally.attempted += 1
            answer = await retry(
                "close",
                lambda a=auth: http.post(f"{identity.url}/v1/accounts/me/close", headers=a),
                202,
            )
            tally.answer(answer.status_code)
            tally.acknowledged[consent_id] = consent_id

    # The rest flows on past the poison record.
    healthy = set(tally.acknowledged) - {poisoned_consent}

    def revoked(events: list[TopicEvent]) -> set[str]:
        return {str(e.data.get("consent_id")) for e in events if e.type == "ConsentRevoked"}

    events = await settled_topic(kafka_bootstrap, CONSENT_EVENTS, lambda ev: healthy <= revoked(ev))
    assert healthy <= revoked(events)
    assert poisoned_consent not in revoked(events)
    # ...and the poison record waits on the dead-letter topic, with its cause.
    dead = await read_topic(kafka_bootstrap, dead_letter_topic(IDENTITY_EVENTS))
    assert any(e.subject == poisoned_subject and e.type == "AccountClosed" for e in dead)
    listed = _dead_letters("list", consent)
    assert "poisoned record of the fault scenario" in listed, listed

    # The operator fixes the cause and replays: applied once, and once only.
    _sql(consent, "DROP TRIGGER poisoned ON stored_events; DROP FUNCTION poisoned();")
    assert "1 replayed, 0 failed again" in _dead_letters("replay", consent)
    assert "0 replayed, 0 failed again" in _dead_letters("replay", consent)

    events = await settled_topic(
        kafka_bootstrap, CONSENT_EVENTS, lambda ev: set(tally.acknowledged) <= revoked(ev)
    )
    verdict = Verdict(
        scenario="poison-record",
        load="6 clients closing their accounts, each with a consent",
        faults="one person's AccountClosed fails every attempt in consent (a broken trigger); "
        "dead-lettered; trigger dropped; replayed twice by the operator command",
    )
    verdict.attempted = tally.attempted
    verdict.acknowledged = len(tally.acknowledged)
    count_effects(
        verdict,
        tally.acknowledged,
        events,
        event_type="ConsentRevoked",
        value_of=lambda e: str(e.data.get("consent_id")),
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)
