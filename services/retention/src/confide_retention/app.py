"""Wiring of the retention service: settings, the toolkit runtime, the policies, the scheduler,
handlers' dependencies, consumers, routes and how refusals answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from confide_events.retention import (
    ErasureCompleted,
    ErasureRequested,
    LegalHoldPlaced,
    LegalHoldReleased,
    RetentionExpired,
)
from confide_toolkit.clock import Clock
from confide_toolkit.kek import KekSchedule
from confide_toolkit.outbox import Outbox
from confide_toolkit.service import Service, run
from confide_toolkit.signed_documents import DocumentSigningKeys
from fastapi import FastAPI

from confide_retention import api, consumers
from confide_retention.handlers import Dependencies
from confide_retention.policies import load_policies
from confide_retention.problems import PROBLEM_TYPES
from confide_retention.scheduler import Scheduler
from confide_retention.settings import RetentionSettings
from confide_retention.store import (
    ErasureCases,
    certificate_signing_keys,
    erasure_cases,
    project_case,
)

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = """Retention policies, legal holds, erasure requests and their certificates.

Each category of personal data is kept for its policy's period (`GET /v1/policies`), from the
facts that start its clock (an account closed, the last note, the last card removed, the last
charge), learnt from the other services' events; then retention emits `RetentionExpired` and
the owning service shreds the person's key for it. A person may ask for their erasure (after a
fresh sign-in), or compliance on their behalf: what no law keeps expires at once, the rest at
its legal end. A legal hold stops every expiry of its person until it is released. Once every
category is answered by its owner (or retained on its legal ground), the case is complete and
its certificate, signed with retention's own key (`GET /v1/signing-keys`), says what happened
to each category and from when no backup can bring the data back."""


def build(settings: RetentionSettings, clock: Clock | None = None) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies, built once."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    if settings.events_topic is not None:
        service.outbox = Outbox(service.name, service.clock, topic=settings.events_topic)
    cases = ErasureCases(service.clock)
    scheduler = Scheduler(
        service.engine,
        cases,
        service.outbox,
        service.clock,
        answer_timeout=settings.answer_timeout,
        batch_size=settings.scheduler_batch,
        interval=settings.scheduler_interval,
    )
    deps = Dependencies(
        engine=service.engine,
        cases=cases,
        outbox=service.outbox,
        clock=service.clock,
        policies=load_policies(settings.policies_file, settings.policy_periods),
        certificate_keys=DocumentSigningKeys(
            certificate_signing_keys,
            service.keyring,
            service.clock,
            purpose="retention.certificates",
        ),
        fresh_sign_in=settings.fresh_sign_in,
        kek_schedule=KekSchedule(),  # from the environment, as every service's key lifecycle
        scheduler=scheduler,
    )
    return service, deps


def create_app(settings: RetentionSettings | None = None, clock: Clock | None = None) -> FastAPI:
    """The retention service's application; `app.state.service` and `app.state.deps` expose
    its runtime to tests and tools."""
    settings = settings or RetentionSettings()  # from the environment
    service, deps = build(settings, clock)
    # A signed-out or closed session's tokens are refused here too, not only at identity.
    service.refuse_revoked_sessions()
    consumers.subscribe(service, deps)
    # Rebuilt from its own event store by `python -m confide_toolkit.read_models rebuild retention`.
    service.read_model(
        "erasure_cases", tables=[erasure_cases], store=deps.cases.events, projection=project_case
    )
    service.document_publications(
        [ErasureRequested, LegalHoldPlaced, LegalHoldReleased, RetentionExpired, ErasureCompleted]
    )
    app = service.create_app(
        title="Confide retention",
        description=DESCRIPTION,
        routers=[api.router(deps, service.current_caller)],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )
    runtime = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The scheduler runs while the service does: after the migrations, before the stop.
        async with runtime(app):
            deps.scheduler.start()
            try:
                yield
            finally:
                await deps.scheduler.stop()

    app.router.lifespan_context = lifespan
    return app


def main() -> None:
    """Serve the retention service (`python -m confide_retention`)."""
    settings = RetentionSettings()  # from the environment
    run(lambda: create_app(settings), settings)
