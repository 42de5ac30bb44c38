"""A dependency outage answers 503 naming the dependency, never 500, and the service serves
again by itself once the dependency is back."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from confide_events import encode_envelope, to_envelope
from confide_events.identity import UserRegistered
from confide_testing import eventually, serving
from confide_toolkit.availability import (
    Availability,
    RefuseWhileUnavailable,
    database_outage,
    install_outage_handlers,
)
from confide_toolkit.clock import SystemClock
from confide_toolkit.database import create_engine
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import ConsumedRecord, EventContext, InboxConsumer, Outcome, RetryPolicy
from confide_toolkit.outbox import Outbox
from confide_toolkit.problem import PROBLEM_JSON, install_problem_handlers
from confide_toolkit.relay import idempotent_producer
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from fastapi import APIRouter, FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "service_migrations"


def assert_outage(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["type"] == f"https://confide.dev/problems/{dependency}-unavailable"
    assert body["dependency"] == dependency


# --- without servers: the watch and the middleware -----------------------------------------


class Switch:
    def __init__(self) -> None:
        self.up = True

    async def check(self) -> bool:
        return self.up


@pytest.fixture
def broker() -> Switch:
    return Switch()


@pytest.fixture
async def client(broker: Switch) -> AsyncIterator[tuple[httpx.AsyncClient, Availability]]:
    availability = Availability({"database": Switch().check, "kafka": broker.check})
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(RefuseWhileUnavailable, availability=availability)

    @app.post("/v1/things")
    async def add_thing() -> dict[str, str]:
        return {"status": "added"}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http, availability


async def test_requests_answer_503_naming_the_broker_while_it_is_down(
    client: tuple[httpx.AsyncClient, Availability], broker: Switch
) -> None:
    http, availability = client
    broker.up = False
    assert await availability.check_now() == {"database": True, "kafka": False}
    assert_outage(await http.post("/v1/things"), "kafka")
    # An operator's probe still answers.
    assert (await http.get("/healthz")).status_code == 200

    broker.up = True
    await availability.check_now()
    assert (await http.post("/v1/things")).json() == {"status": "added"}


async def test_the_watch_notices_an_outage_and_the_recovery_by_itself(
    client: tuple[httpx.AsyncClient, Availability], broker: Switch
) -> None:
    http, availability = client
    availability.interval = 0.02
    stop = asyncio.Event()
    watch = asyncio.create_task(availability.watch(stop))
    try:
        broker.up = False
        await eventually(lambda: _status_is(http, 503), timeout=5)
        broker.up = True
        await eventually(lambda: _status_is(http, 200), timeout=5)
    finally:
        stop.set()
        await watch


async def _status_is(http: httpx.AsyncClient, status: int) -> bool:
    return (await http.post("/v1/things")).status_code == status


def test_a_failing_check_counts_as_unavailable() -> None:
    async def broken() -> bool:
        raise OSError("connection refused")

    availability = Availability({"kafka": broken})
    assert asyncio.run(availability.check_now()) == {"kafka": False}
    assert availability.unavailable == ("kafka",)


def test_connection_errors_are_outages_and_refused_statements_are_not() -> None:
    unreachable = psycopg.OperationalError("connection refused")
    assert database_outage(sa_exc.OperationalError("SELECT 1", {}, unreachable))
    assert database_outage(sa_exc.TimeoutError("QueuePool limit reached"))
    duplicate = psycopg.errors.UniqueViolation("duplicate key")
    assert not database_outage(sa_exc.IntegrityError("INSERT", {}, duplicate))
    assert not database_outage(ValueError("not a database error"))


def test_the_drivers_own_connection_errors_are_outages_too() -> None:
    # Raised by the toolkit's statements on the psycopg connection (outbox, positions).
    assert database_outage(psycopg.OperationalError("server closed the connection"))
    assert database_outage(psycopg.errors.AdminShutdown("terminating connection"))
    assert not database_outage(psycopg.errors.UniqueViolation("duplicate key"))
    assert not database_outage(psycopg.errors.UndefinedTable("nope"))


async def test_the_drivers_own_connection_error_answers_503_not_500() -> None:
    app = FastAPI()
    install_outage_handlers(app)
    install_problem_handlers(app)

    @app.get("/v1/cut")
    async def cut() -> None:
        raise psycopg.OperationalError("consuming input failed: server closed the connection")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert_outage(await http.get("/v1/cut"), "database")


async def test_a_database_error_that_is_no_outage_stays_a_generic_500() -> None:
    app = FastAPI()
    install_outage_handlers(app)
    install_problem_handlers(app)

    @app.get("/v1/broken")
    async def broken() -> None:
        raise sa_exc.ProgrammingError("SELECT nope", {}, psycopg.errors.UndefinedTable("nope"))

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/v1/broken")
    assert response.status_code == 500
    assert response.json()["type"] == "https://confide.dev/problems/internal-error"


# --- a real service whose database goes away and comes back ---------------------------------


class Cable:
    """A TCP forwarder to PostgreSQL that a test can unplug (refusing new connections and
    cutting the open ones, as a database that stops does) and plug in again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def plug(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._writers -= {client_w, server_w}


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


@pytest.mark.integration
async def test_a_database_outage_answers_503_and_the_service_recovers_by_itself(
    database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    target = urlsplit(database_url)
    cable = Cable(target.hostname or "127.0.0.1", target.port or 5432)
    await cable.plug()
    service = Service(
        ServiceSettings(
            service_name="probe",
            database_url=through(database_url, cable.port),
            kafka_bootstrap=kafka_bootstrap,
            kek_file=tmp_path / "kek.json",
            consumer_group=f"probe-{uuid.uuid4().hex[:8]}",
            dependency_check_interval=0.2,
            graceful_shutdown_seconds=5,
        ),
        MIGRATIONS,
    )
    router = APIRouter()

    @router.get("/v1/count")
    async def count() -> dict[str, int]:
        async with service.engine.connect() as conn:
            return {"events": int(await conn.scalar(text("SELECT count(*) FROM stored_events")))}

    app = service.create_app(title="Probe", description="outage", routers=[router], deps=None)
    async with serving(app) as http:
        # A warm pool: several connections that the outage will leave stale.
        warm = await asyncio.gather(*(http.get("/v1/count") for _ in range(8)))
        assert [r.json() for r in warm] == [{"events": 0}] * 8

        await cable.unplug()
        # At once (before the watch has noticed) and afterwards: 503, never 500.
        for _ in range(10):
            assert_outage(await http.get("/v1/count"), "database")
            await asyncio.sleep(0.05)
        ready = await http.get("/readyz")
        assert_outage(ready, "database")
        assert ready.json()["checks"] == {"database": False, "kafka": True}

        await cable.plug()
        answers: list[int] = []

        async def serving_again() -> bool:
            answers.append((await http.get("/v1/count")).status_code)
            return answers[-1] == 200

        await eventually(serving_again, timeout=20)
        # Stale pooled connections cost at most a 503 each, never a 500; then all is served.
        assert set(answers) <= {200, 503}
        assert [(await http.get("/v1/count")).status_code for _ in range(20)] == [200] * 20
        assert (await http.get("/readyz")).status_code == 200
    await cable.unplug()


@pytest.mark.integration
async def test_an_event_waits_out_a_database_outage_instead_of_being_dead_lettered(
    database_url: str, toolkit_engine: AsyncEngine, kafka_bootstrap: str
) -> None:
    async with toolkit_engine.begin() as conn:
        await conn.execute(text("CREATE TABLE effects (subject_id uuid PRIMARY KEY)"))

    async def record_effect(event: UserRegistered, ctx: EventContext) -> None:
        await ctx.conn.execute(
            text("INSERT INTO effects (subject_id) VALUES (:s)"), {"s": event.subject_id}
        )

    target = urlsplit(database_url)
    cable = Cable(target.hostname or "127.0.0.1", target.port or 5432)
    await cable.plug()
    engine = create_engine(through(database_url, cable.port), pool_size=2)
    dead_letters = idempotent_producer(kafka_bootstrap)
    await dead_letters.start()
    # Few, quick retries: an outage longer than all of them must still not dead-letter.
    retry = RetryPolicy(attempts=2, first_backoff=0.01, max_backoff=0.1)
    consumer = InboxConsumer(
        "test",
        engine,
        Outbox("identity", SystemClock()),
        {UserRegistered: record_effect},
        dead_letters,
        retry,
    )
    subject = uuid.uuid4()
    event = UserRegistered(subject_id=subject, role="client", registered_at=datetime.now(UTC))
    envelope = to_envelope(
        event, event_id=uuid7(), time=datetime.now(UTC), correlation_id=str(uuid.uuid4())
    )
    record = ConsumedRecord(
        topic=f"outage-{uuid.uuid4().hex[:8]}",
        partition=0,
        offset=0,
        key=str(subject).encode(),
        value=encode_envelope(envelope),
    )
    try:
        await cable.unplug()
        consuming = asyncio.create_task(consumer.consume(record))
        await asyncio.sleep(1.0)  # ten times every retry's backoff together
        assert not consuming.done()
        await cable.plug()
        assert await asyncio.wait_for(consuming, 20) == Outcome.APPLIED
    finally:
        await dead_letters.stop()
        await engine.dispose()
        await cable.unplug()
    async with toolkit_engine.connect() as conn:
        applied = await conn.scalar(
            text("SELECT count(*) FROM effects WHERE subject_id = :s"), {"s": subject}
        )
    assert applied == 1
