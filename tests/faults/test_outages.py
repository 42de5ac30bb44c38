"""The broker and the database go away under load and come back: meanwhile HTTP answers 503
with Retry-After (never 500), and afterwards nothing acknowledged is lost.

These scenarios stop the native stack's own Kafka broker and PostgreSQL (`deploy/stack.sh`,
as `make test` starts them), then bring them back with `deploy/stack.sh infra-up`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from confide_events.topics import IDENTITY_EVENTS
from confide_testing.processes import ServiceProcess, ServiceProcesses

from .checker import (
    VERDICTS,
    Verdict,
    assert_nothing_lost_or_doubled,
    count_effects,
    settled_topic,
    tally_into,
    write_verdict,
)
from .load import Tally, after_fault, register, steady

# They stop the stack's own PostgreSQL and Kafka: `outage` runs them after every other test.
pytestmark = [pytest.mark.integration, pytest.mark.outage]

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
STACK_SH = ROOT / "deploy" / "stack.sh"
OUTAGE_SECONDS = 6


@pytest.fixture(autouse=True)
def native_stack() -> None:
    if not (STACK / "run" / "kafka.pid").exists() or not (STACK / "postgres").exists():
        pytest.skip(f"needs the native stack of deploy/stack.sh in {STACK} (make test starts it)")


def _stack_ports() -> dict[str, str]:
    """The ports of the stack in STACK, read from the files stack.sh wrote when it started it.

    `make faults` exports only CONFIDE_STACK_DIR: without these, `stack.sh infra-up` on a stack
    with ports of its own (a second stack beside the dev one) would look for PostgreSQL and
    Kafka on the default ports, refuse to start them ("port taken") and rewrite stack.env with
    the default service ports."""
    written: dict[str, str] = {}
    for line in (STACK / "stack.env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        written[name] = value
    kafka = (STACK / "kafka" / "server.properties").read_text()
    controller = re.search(r"^controller\.quorum\.voters=\S*:(\d+)$", kafka, re.MULTILINE)
    assert controller, f"no controller port in {STACK}/kafka/server.properties"
    identity_port = urlsplit(written["CONFIDE_IDENTITY_URL"]).port
    return {
        "CONFIDE_PG_PORT": str(urlsplit(written["CONFIDE_TEST_POSTGRES_URL"]).port),
        "CONFIDE_KAFKA_PORT": written["CONFIDE_KAFKA_BOOTSTRAP"].rpartition(":")[2],
        "CONFIDE_KAFKA_CONTROLLER_PORT": controller.group(1),
        # stack.sh numbers the services from identity's 8001.
        "CONFIDE_SERVICE_PORT_OFFSET": str((identity_port or 8001) - 8001),
    }


def _infra_up() -> None:
    done = subprocess.run(
        [str(STACK_SH), "infra-up"],
        env={**os.environ, "CONFIDE_STACK_DIR": str(STACK), **_stack_ports()},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _kill_broker() -> None:
    os.kill(int((STACK / "run" / "kafka.pid").read_text()), signal.SIGKILL)


def _stop_postgres_immediately() -> None:
    pg_ctl = subprocess.run(
        ["bash", "-c", "command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -n 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [pg_ctl, "-D", str(STACK / "postgres"), "-m", "immediate", "-w", "stop"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, capture_output=True, timeout=60, check=True)


async def _registrations_through(
    scenario: str, stop_it: Callable[[], None], identity: ServiceProcess, kafka_bootstrap: str
) -> Verdict:
    tally = Tally()
    run = uuid.uuid4().hex[:8]

    async with httpx.AsyncClient(timeout=15) as http:

        async def registration(n: int) -> None:
            await register(http, identity.url, f"outage-{run}-{n}@example.org", tally)

        async def outage() -> None:
            await asyncio.to_thread(stop_it)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(_infra_up)

        stop = asyncio.Event()
        await asyncio.gather(
            steady(stop, 4, registration), after_fault(stop, outage(), before=4, after=6)
        )

    acknowledged = set(tally.acknowledged.values())
    events = await settled_topic(
        kafka_bootstrap,
        IDENTITY_EVENTS,
        lambda events: acknowledged <= {e.subject for e in events if e.type == "UserRegistered"},
    )
    verdict = Verdict(
        scenario=scenario,
        load="4 clients registering accounts: 4 s, the outage, 6 s after it ends",
        faults="",
    )
    tally_into(verdict, tally)
    count_effects(
        verdict, acknowledged, events, event_type="UserRegistered", value_of=lambda e: e.subject
    )
    assert tally.missing_retry_after == 0, "answers of 503 without Retry-After"
    return verdict


async def test_the_broker_killed_and_restarted_under_load(
    processes: ServiceProcesses, kafka_bootstrap: str
) -> None:
    identity = processes.start("identity")
    verdict = await _registrations_through(
        "sigkill-broker", _kill_broker, identity, kafka_bootstrap
    )
    verdict.faults = f"the Kafka broker SIGKILLed at 4 s, restarted after {OUTAGE_SECONDS} s"
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)


async def test_postgres_stopped_immediately_and_restarted_under_load(
    processes: ServiceProcesses, kafka_bootstrap: str
) -> None:
    identity = processes.start("identity")
    verdict = await _registrations_through(
        "postgres-immediate-stop", _stop_postgres_immediately, identity, kafka_bootstrap
    )
    verdict.faults = (
        f"PostgreSQL stopped with -m immediate at 4 s, restarted after {OUTAGE_SECONDS} s"
    )
    write_verdict(VERDICTS, verdict)
    assert_nothing_lost_or_doubled(verdict)
