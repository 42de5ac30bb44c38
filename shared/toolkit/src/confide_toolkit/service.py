"""The runtime every service process is built from, wired once: database engine, outbox and its
relay, idempotent Kafka consumers, keyring, token verification, health and readiness, OpenAPI
and AsyncAPI documents, errors, logs and traces, and a clean shutdown.

A service's `app.py` creates one `Service`, registers its subscriptions, and asks it for the
FastAPI application with the service's routers. Nothing a replica keeps in memory is needed for
correctness: consumers share work through their group, the relay through its lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import uvicorn
from confide_events import Envelope, IntegrationEvent
from confide_events.identity import SigningKeyPublished
from confide_events.topics import IDENTITY_EVENTS, TOPIC_BY_PRODUCER
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from sqlalchemy import Table, text

from confide_toolkit.auth import (
    Caller,
    RevocationCheck,
    TokenVerifier,
    caller_dependency,
    record_signing_key,
)
from confide_toolkit.availability import (
    Availability,
    RefuseWhileUnavailable,
    install_outage_handlers,
    outage_problem,
)
from confide_toolkit.catch_up import (
    CatchUp,
    RefuseWhileCatchingUp,
    catching_up_problem,
    database_is_new,
)
from confide_toolkit.clock import Clock, SystemClock
from confide_toolkit.commands import ConcurrentChange
from confide_toolkit.database import create_engine
from confide_toolkit.event_store import EventStore, ReadModelUpdate
from confide_toolkit.heap import freeze_what_start_built, thaw
from confide_toolkit.inbox import (
    EventContext,
    Handler,
    InboxConsumer,
    RetryPolicy,
)
from confide_toolkit.kek import KekSchedule, keks_from_settings
from confide_toolkit.keyring import Keyring
from confide_toolkit.keys import KekLifecycle, ScheduledKeks
from confide_toolkit.logs import configure_logging
from confide_toolkit.migrations import upgrade_database
from confide_toolkit.openapi import document_answers
from confide_toolkit.outbox import Outbox
from confide_toolkit.problem import (
    BodySizeLimit,
    ProblemType,
    ProblemTypes,
    install_problem_handlers,
    problem_response,
)
from confide_toolkit.read_models import ReadModel
from confide_toolkit.relay import OutboxRelay, idempotent_producer
from confide_toolkit.revocations import RevokedSessions, revocation_handlers
from confide_toolkit.settings import ServiceSettings
from confide_toolkit.subscriptions import subscribe_batches
from confide_toolkit.telemetry import configure_telemetry, instrument_fastapi

logger = logging.getLogger(__name__)

CONCURRENT_CHANGE = ProblemType(409, "Concurrent change", slug="concurrent-change")
"""How every service answers a command that gave up after repeated conflicting writers."""

UNPACKAGED_VERSION = "0+unpackaged"
"""The version a service reports when no `confide-<name>` distribution is installed (a service
built inside a test, such as the toolkit's probe)."""


def service_version(service_name: str) -> str:
    """The installed version of the service's distribution, `confide-<service_name>` (the
    `version` of its pyproject.toml), or `UNPACKAGED_VERSION` when there is none."""
    try:
        return metadata.version(f"confide-{service_name}")
    except metadata.PackageNotFoundError:
        return UNPACKAGED_VERSION


async def _record_signing_key(event: SigningKeyPublished, ctx: EventContext) -> None:
    await record_signing_key(
        ctx.conn,
        kid=event.kid,
        public_jwk=event.public_jwk.model_dump(mode="json"),
        published_at=event.published_at,
        not_after=event.not_after,
    )


class Service:
    """One service process: what its handlers and routers are wired with."""

    def __init__(
        self, settings: ServiceSettings, migrations: Path, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.migrations = migrations
        self.name = settings.service_name
        self.version = service_version(self.name)
        self.clock: Clock = clock or SystemClock()
        self.engine = create_engine(settings.database_url)
        self.outbox = Outbox(self.name, self.clock)
        self.keyring = Keyring(self.name, keks_from_settings(settings), self.clock)
        self.token_verifier = TokenVerifier(self.engine, self.clock)
        self.current_caller: Callable[..., Awaitable[Caller]] = caller_dependency(
            self.token_verifier
        )
        self.broker = KafkaBroker(
            settings.kafka_bootstrap,
            graceful_timeout=settings.graceful_shutdown_seconds,
            logger=logging.getLogger(f"confide.{self.name}.broker"),
            # Per-record "Received/Processed" lines are debugging noise in production logs.
            log_level=logging.DEBUG,
        )
        self.dead_letters = idempotent_producer(settings.kafka_bootstrap)
        self.relay = OutboxRelay(
            settings.database_url,
            settings.kafka_bootstrap,
            poll_interval=settings.relay_poll_interval,
        )
        self._subscriptions: dict[str, dict[type[IntegrationEvent], Handler]] = {}
        self._consumers: dict[str, InboxConsumer] = {}
        self._start_hooks: list[Callable[[], Awaitable[None]]] = []
        self._read_models: dict[str, ReadModel] = {}
        self.read_models_rebuilt_by: str | None = None
        """Said by `read_models list` of a service whose read models come from elsewhere."""
        # Set at stop: ends the relay and the dependency watch.
        self._stopping = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self.availability = Availability(
            {"database": self._database_ok, "kafka": self._kafka_ok},
            interval=settings.dependency_check_interval,
        )
        self._watch_task: asyncio.Task[None] | None = None
        # Nothing is served until the consumers applied what was published before the start
        # (a restored database re-applies the erasures it missed first): `confide_toolkit.catch_up`.
        self.catch_up = CatchUp(self.name, self.engine, settings.kafka_bootstrap)
        self._catch_up_task: asyncio.Task[None] | None = None
        self._kek_task: asyncio.Task[None] | None = None
        # Every service verifies tokens from the keys identity publishes: never by calling it.
        self.subscribe(IDENTITY_EVENTS, {SigningKeyPublished: _record_signing_key})

    # -- wiring -----------------------------------------------------------------------------

    def subscribe(self, topic: str, handlers: Mapping[type[IntegrationEvent], Handler]) -> None:
        """Handle these events of a topic, each exactly once in effect (through the inbox):
        one by one (`EventHandler`), or in runs for read models (`inbox.BatchProjection`)."""
        self._subscriptions.setdefault(topic, {}).update(handlers)

    def document_publications(self, events: Iterable[type[IntegrationEvent]]) -> None:
        """Declare the events this service publishes, for its AsyncAPI document."""
        names = ", ".join(sorted(e.event_type for e in events))
        self.broker.publisher(
            TOPIC_BY_PRODUCER[self.name],
            title=f"{TOPIC_BY_PRODUCER[self.name]}:publish",
            description=f"CloudEvents (structured JSON) published through the outbox: {names}",
            schema=Envelope,
        )

    def check_token_revocation(self, is_revoked: RevocationCheck) -> None:
        """Refuse the access tokens of the callers `is_revoked` says were revoked (identity
        checks its own sessions this way; other services call `refuse_revoked_sessions`).
        Call before create_app."""
        self.token_verifier = TokenVerifier(self.engine, self.clock, is_revoked=is_revoked)
        self.current_caller = caller_dependency(self.token_verifier)

    def refuse_revoked_sessions(self) -> None:
        """Refuse, for every authenticated caller, the access tokens of the sessions identity
        ended (sign-out, password change, closure, a stolen refresh token), within about a
        second of the `SessionsRevoked` event instead of when they expire: keeps the
        `session_revocations` read model from identity.events (`confide_toolkit.revocations`).
        The service's migrations must opt into the `SESSION_REVOCATIONS` toolkit part. Call
        before create_app."""
        self.subscribe(IDENTITY_EVENTS, revocation_handlers())
        self.check_token_revocation(RevokedSessions(self.engine, self.clock).is_revoked)

    def read_model(
        self, name: str, *, tables: Sequence[Table], store: EventStore, projection: ReadModelUpdate
    ) -> None:
        """Declare a read model: `projection` (one of `store`'s) alone writes `tables`, so an
        operator may rebuild them from the store while the service serves
        (`python -m confide_toolkit.read_models rebuild <service>`). Declare only tables whose
        rows come from the events alone: a rebuild deletes them."""
        if name in self._read_models:
            raise ValueError(f"read model {name} is declared twice")
        self._read_models[name] = ReadModel(name, tuple(tables), store, projection)

    def read_models(self) -> dict[str, ReadModel]:
        """The read models declared, by name (for operator tools)."""
        return dict(self._read_models)

    def after_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` once the service has started (consumers and relay running)."""
        self._start_hooks.append(hook)

    def consumer(self, topic: str) -> InboxConsumer:
        """The idempotent consumer of one topic (for tests and replay tools)."""
        return self._consumers[topic]

    def consumers(self) -> dict[str, InboxConsumer]:
        """The idempotent consumer of each subscribed topic (for operator tools)."""
        return dict(self._consumers)

    def _register_subscribers(self) -> None:
        retry = RetryPolicy(attempts=self.settings.consumer_retry_attempts)
        for topic, handlers in self._subscriptions.items():
            consumer = InboxConsumer(
                name=self.name,
                engine=self.engine,
                outbox=self.outbox,
                handlers=handlers,
                dead_letters=self.dead_letters,
                retry=retry,
                group=self.settings.consumer_group or self.name,
            )
            self._consumers[topic] = consumer
            names = ", ".join(sorted(e.event_type for e in handlers))

            subscribe_batches(
                self.broker,
                [topic],
                consumer.group,
                consumer,
                title=f"{topic}:{self.name}",
                description=f"Consumed idempotently by {self.name}: {names}",
            )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        new_database = await database_is_new(self.engine)
        await asyncio.to_thread(upgrade_database, self.settings.database_url, self.migrations)
        # The marks are taken before the consumers start: what had been published by now.
        await self.catch_up.capture(self._subscriptions)
        if new_database:
            self.catch_up.not_needed()
        await self.dead_letters.start()
        await self.broker.start()
        self._stopping.clear()
        if not await self.catch_up.wait(self.catch_up.start_wait):
            logger.warning(
                "serving 503 catching-up until the consumers caught up",
                extra={"service": self.name, "records_behind": self.catch_up.behind},
            )
            self._catch_up_task = asyncio.create_task(
                self.catch_up.watch(self._stopping), name="catch-up"
            )
        self._relay_task = asyncio.create_task(self.relay.run(self._stopping), name="relay")
        self._kek_task = asyncio.create_task(self._maintain_keks(self._stopping), name="keks")
        self._watch_task = asyncio.create_task(
            self.availability.watch(self._stopping), name="dependency-watch"
        )
        for hook in self._start_hooks:
            await hook()
        freeze_what_start_built()
        logger.info("service started", extra={"service": self.name})

    async def stop(self) -> None:
        """Stop taking events, finish the ones in flight, flush the outbox, close connections."""
        await self.broker.stop()
        self._stopping.set()
        if self._relay_task is not None:
            await self._relay_task
        if self._watch_task is not None:
            await self._watch_task
        if self._catch_up_task is not None:
            await self._catch_up_task
        if self._kek_task is not None:
            await self._kek_task
        await self.dead_letters.stop()
        await self.engine.dispose()
        thaw()
        logger.info("service stopped", extra={"service": self.name})

    async def _maintain_keks(self, stop: asyncio.Event) -> None:
        """The KEK schedule (`confide_toolkit.keys`), run by the service itself at start and
        every maintenance interval: rotate when due, re-wrap, destroy the versions past the
        backup window. Replicas may all run it: the key file decides a rotation under its lock.
        A provider that keeps no version dates is rotated by its own tools instead."""
        keks = self.keyring.keks
        if not (hasattr(keks, "lifecycle") and hasattr(keks, "retire")):
            return
        schedule = KekSchedule()
        scheduled = cast(ScheduledKeks, keks)  # a file of dated versions (see above)
        lifecycle = KekLifecycle(scheduled, self.keyring, self.engine, schedule, self.clock)
        interval = max(schedule.maintenance_interval.total_seconds(), 1.0)
        while not stop.is_set():
            try:
                done = await lifecycle.maintain()
                if done.rotated_to or done.retired or done.blocked:
                    logger.info(
                        "key-encryption keys maintained",
                        extra={
                            "service": self.name,
                            "rotated_to": done.rotated_to,
                            "retired": done.retired,
                            "blocked": sorted(done.blocked),
                        },
                    )
            except Exception as error:
                # Never fatal to serving: the next round tries again, and `keys status` shows
                # a version past its death as blocked.
                logger.warning(
                    "KEK maintenance failed; retrying at the next interval",
                    extra={"service": self.name, "error_type": type(error).__name__},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # -- HTTP -------------------------------------------------------------------------------

    def create_app(
        self,
        *,
        title: str,
        description: str,
        routers: Sequence[APIRouter],
        deps: object,
        problem_types: ProblemTypes | None = None,
    ) -> FastAPI:
        """The service's FastAPI application with the routers, /healthz, /readyz and
        /asyncapi.json; the subscribers are registered here, so subscribe() first.

        `problem_types` declares how the service's domain exceptions answer (its
        `problems.PROBLEM_TYPES`); `ConcurrentChange` answers 409 in every service. The app
        keeps the runtime and the handlers' dependencies as `app.state.service` and
        `app.state.deps`, for tests and tools."""
        configure_logging(self.name, self.settings.log_level)
        configure_telemetry(self.name, self.settings.otel_exporter)
        self._register_subscribers()
        app = FastAPI(
            title=title, description=description, version=self.version, lifespan=self.lifespan
        )
        # For `auth.require_role(...)`'s default caller dependency.
        app.state.token_verifier = self.token_verifier
        app.state.service = self
        app.state.deps = deps
        install_outage_handlers(app)
        install_problem_handlers(
            app, {ConcurrentChange: CONCURRENT_CHANGE, **(problem_types or {})}
        )
        app.add_middleware(BodySizeLimit, max_bytes=self.settings.max_body_bytes)
        app.add_middleware(RefuseWhileCatchingUp, catch_up=self.catch_up)
        app.add_middleware(RefuseWhileUnavailable, availability=self.availability)
        for router in routers:
            app.include_router(router)
        app.include_router(self._operations_router(title))
        document_answers(app, (answer.status for answer in (problem_types or {}).values()))
        instrument_fastapi(app)
        return app

    def _operations_router(self, title: str) -> APIRouter:
        router = APIRouter(tags=["operations"])

        @router.get("/healthz", summary="Liveness: the process answers")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name, "version": self.version}

        @router.get(
            "/readyz",
            summary="Readiness: database and Kafka reachable, consumers caught up since start",
        )
        async def readyz() -> JSONResponse:
            checks = await self.availability.check_now()
            relay = "active" if self.relay.is_active else "standby"
            unavailable = [name for name, ok in checks.items() if not ok]
            catch_up = {
                "caught_up": self.catch_up.caught_up,
                "records_behind": self.catch_up.behind,
            }
            if not unavailable and self.catch_up.caught_up:
                return JSONResponse(
                    {"status": "ready", "checks": checks, "relay": relay, "catch_up": catch_up}
                )
            # The same problem type as every other request gets meanwhile, with the checks.
            if unavailable:
                problem = outage_problem(unavailable[0])
            else:
                problem = catching_up_problem(self.catch_up.behind)
            problem.extensions.update({"checks": checks, "relay": relay, "catch_up": catch_up})
            return problem_response(problem)

        @router.get("/asyncapi.json", summary="AsyncAPI document of the events in and out")
        async def asyncapi() -> Any:
            spec = AsyncAPI(self.broker, title=f"{title} events", version=self.version)
            return spec.to_specification().to_jsonable()

        return router

    async def _database_ok(self) -> bool:
        try:
            async with asyncio.timeout(2):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def _kafka_ok(self) -> bool:
        # The metadata of one topic, the one every service reads: FastStream's `ping` asks for
        # every topic's, and on a broker holding hundreds of topics decoding that answer each
        # second took a tenth of a busy service's CPU (py-spy of consent under grant load).
        try:
            async with asyncio.timeout(2):
                await self.broker.config.admin_client.describe_topics([IDENTITY_EVENTS])
            return True
        except Exception:
            return False


def run(create_app: Callable[[], FastAPI], settings: ServiceSettings) -> None:
    """Serve the service until SIGTERM/SIGINT, then shut down gracefully.

    The app is built by uvicorn inside its event loop (a factory): the Kafka clients a
    `Service` creates need a running loop."""
    uvicorn.run(
        create_app,
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
    )
