"""A backup taken before an erasure, restored after it, serves nothing of the erased person.

Identity runs as its own process on a scratch database and the real broker. A person registers;
the database is dumped (pg_dump); retention's verdict on their profile arrives (a real
`RetentionExpired` on retention.events) and identity shreds it. The dump is then restored over
the database, bringing the person's profile key back, and identity is started on it again: its
consumers resume from the positions stored in the backup, and until they have applied what was
published before the start (the erasure among it) it answers 503 `catching-up`. Its first real
answer, within 60 s of its start, already refuses the old password, and the profile reads as
erased (issue 19, item 6a)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confide_events import CLOUDEVENTS_JSON, CONTENT_TYPE_HEADER, encode_envelope, to_envelope
from confide_events.retention import RetentionExpired
from confide_events.topics import RETENTION_EVENTS
from confide_identity.app import build
from confide_identity.handlers import accounts
from confide_identity.settings import IdentitySettings
from confide_testing import Infrastructure
from confide_toolkit.database import create_scratch_database, drop_database, libpq_url
from confide_toolkit.ids import uuid7
from confide_toolkit.keyring import ERASED
from confide_toolkit.relay import idempotent_producer

pytestmark = pytest.mark.integration

WITHIN_SECONDS = 60.0
"""Issue 19: the restored service serves nothing of the erased person within 60 s of its start."""


@dataclass
class Identity:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Scratch:
    name: str
    url: str
    kek_file: Path
    group: str


@pytest.fixture
def scratch(infrastructure: Infrastructure, tmp_path: Path) -> Iterator[Scratch]:
    name, url = create_scratch_database(infrastructure.postgres_admin_url, "it_restore")
    try:
        # The same key file and consumer group across the restore, as a redeployed replica has.
        yield Scratch(name, url, tmp_path / "identity.kek.json", f"identity-it-{uuid7().hex[:8]}")
    finally:
        drop_database(infrastructure.postgres_admin_url, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_identity(scratch: Scratch, kafka_bootstrap: str, tmp_path: Path) -> Identity:
    port = _free_port()
    log_path = tmp_path / f"identity-{port}.log"
    env = {
        **os.environ,
        "CONFIDE_SERVICE_NAME": "identity",
        "CONFIDE_DATABASE_URL": scratch.url,
        "CONFIDE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CONFIDE_HTTP_PORT": str(port),
        "CONFIDE_KEK_FILE": str(scratch.kek_file),
        "CONFIDE_CONSUMER_GROUP": scratch.group,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "confide_identity"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Identity(f"http://127.0.0.1:{port}", process, log_path, time.monotonic())


async def until_ready(identity: Identity, timeout: float = 90) -> None:
    async with httpx.AsyncClient(base_url=identity.url, timeout=2) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if identity.process.poll() is not None:
                pytest.fail(f"identity exited:\n{identity.log()[-3000:]}")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"identity not ready within {timeout} s:\n{identity.log()[-3000:]}")


def run(*command: str) -> None:
    # The PostgreSQL client tools, with arguments this test made.
    subprocess.run(command, check=True, capture_output=True, timeout=120)


async def publish_expiry(kafka_bootstrap: str, subject_id: uuid.UUID) -> None:
    """What retention publishes when a person's profile must go."""
    event = RetentionExpired(
        subject_id=subject_id,
        category="identity.profile",
        policy="identity.profile.erasure_request",
        due_at=datetime.now(UTC),
        erasure_case_id=uuid.uuid4(),
    )
    envelope = to_envelope(
        event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=str(uuid.uuid4())
    )
    producer = idempotent_producer(kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            RETENTION_EVENTS,
            value=encode_envelope(envelope),
            key=envelope.subject.encode(),
            headers=[(CONTENT_TYPE_HEADER, CLOUDEVENTS_JSON.encode())],
        )
    finally:
        await producer.stop()


async def profile_of(scratch: Scratch, kafka_bootstrap: str, user_id: uuid.UUID) -> object:
    """The account as identity's own code reads it from the database (with the key file)."""
    settings = IdentitySettings(
        database_url=scratch.url, kafka_bootstrap=kafka_bootstrap, kek_file=scratch.kek_file
    )
    service, deps = build(settings)
    try:
        return await accounts.read_account(deps, user_id)
    finally:
        await service.engine.dispose()


async def test_a_backup_from_before_an_erasure_serves_nothing_of_the_person_once_restored(
    scratch: Scratch, infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> None:
    credentials = {
        "email": f"restored-{uuid.uuid4().hex[:8]}@example.org",
        "password": f"copper lantern {uuid.uuid4().hex[:6]} meadow",
    }
    backup = tmp_path / "identity.dump"

    first = start_identity(scratch, kafka_bootstrap, tmp_path)
    try:
        await until_ready(first)
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as http:
            registered = await http.post(
                "/v1/accounts",
                json={**credentials, "display_name": "Restored Person", "role": "client"},
            )
            assert registered.status_code == 201, registered.text
            user_id = uuid.UUID(registered.json()["user_id"])
            assert (await http.post("/v1/sessions", json=credentials)).status_code == 200

            run("pg_dump", "--format=custom", f"--file={backup}", libpq_url(scratch.url))

            await publish_expiry(kafka_bootstrap, user_id)
            async with asyncio.timeout(30):
                while (await http.post("/v1/sessions", json=credentials)).status_code != 401:
                    await asyncio.sleep(0.2)
    finally:
        first.stop()

    admin = libpq_url(infrastructure.postgres_admin_url)
    run("psql", admin, "-c", f'DROP DATABASE "{scratch.name}" WITH (FORCE)')
    run("psql", admin, "-c", f'CREATE DATABASE "{scratch.name}"')
    run("pg_restore", f"--dbname={libpq_url(scratch.url)}", str(backup))
    # The backup brought the person back: their profile key, and so their profile, readable.
    restored = await profile_of(scratch, kafka_bootstrap, user_id)
    assert restored.status == "active"  # type: ignore[attr-defined]
    assert restored.profile.email == credentials["email"]  # type: ignore[attr-defined]

    second = start_identity(scratch, kafka_bootstrap, tmp_path)
    try:
        refused = 0
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            deadline = second.started_at + WITHIN_SECONDS
            answer: httpx.Response | None = None
            while answer is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer within {WITHIN_SECONDS} s:\n{second.log()[-3000:]}")
                if second.process.poll() is not None:
                    pytest.fail(f"identity exited:\n{second.log()[-3000:]}")
                try:
                    response = await http.post("/v1/sessions", json=credentials)
                except httpx.TransportError:  # not listening yet
                    await asyncio.sleep(0.1)
                    continue
                if response.status_code == 503:
                    assert response.json()["type"].endswith("/catching-up"), response.text
                    assert int(response.headers["Retry-After"]) > 0
                    refused += 1
                    await asyncio.sleep(0.1)
                    continue
                answer = response
            # Its very first answer already knows of the erasure: the old password fails.
            assert answer.status_code == 401, answer.text
            assert time.monotonic() - second.started_at <= WITHIN_SECONDS
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["catch_up"] == {"caught_up": True, "records_behind": 0}
        # Either it refused until caught up, or it caught up (the erasure applied) while still
        # starting, before it listened at all: never an answer from before the erasure.
        log = second.log()
        assert refused > 0 or log.index("consumers caught up") < log.index("service started")
        erased = await profile_of(scratch, kafka_bootstrap, user_id)
        assert erased.status == "erased"  # type: ignore[attr-defined]
        assert erased.profile.email is ERASED  # type: ignore[attr-defined]
        assert erased.profile.display_name is ERASED  # type: ignore[attr-defined]
        print(f"restored identity refused {refused} requests with 503 catching-up first")
    finally:
        second.stop()
