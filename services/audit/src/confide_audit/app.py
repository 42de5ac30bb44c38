"""Wiring of the audit service: settings, the toolkit runtime, handlers' dependencies, the
trail's subscription, the API, the compliance console and how refusals answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from confide_toolkit.clock import Clock
from confide_toolkit.service import Service, run
from fastapi import FastAPI

from confide_audit import api, console, consumers
from confide_audit.handlers import Dependencies
from confide_audit.problems import PROBLEM_TYPES
from confide_audit.settings import AuditSettings

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = """A tamper-evident trail of the whole history, and the answers compliance needs
from it.

Every record of every event topic is kept from offset 0, append-only and hash-chained over its
raw bytes (SHA-256 of the previous link, the record's topic, partition, offset and value), so
any later change to a stored entry is detected (`python -m confide_audit verify`). Compliance
officers (and no one else: 403) read a person's timeline, every disclosure with the consent it
relied on and whether that consent was valid at that moment, every record access, and every
erasure case; each of their queries is itself recorded in the trail. Audit publishes nothing."""


def build(settings: AuditSettings, clock: Clock | None = None) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies, built once."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    deps = Dependencies(
        engine=service.engine,
        clock=service.clock,
        acknowledgement_timeout=timedelta(hours=settings.acknowledgement_hours),
    )
    return service, deps


def create_app(settings: AuditSettings | None = None, clock: Clock | None = None) -> FastAPI:
    """The audit service's application; `app.state.service` and `app.state.deps` expose its
    runtime to tests and tools."""
    settings = settings or AuditSettings()  # from the environment
    service, deps = build(settings, clock)
    service.refuse_revoked_sessions()
    consumers.subscribe(service, settings)
    # No event store of its own: `python -m confide_toolkit.read_models list audit` says so.
    service.read_models_rebuilt_by = (
        "its trail is rebuilt from Kafka by `python -m confide_audit replay`"
    )
    return service.create_app(
        title="Confide audit",
        description=DESCRIPTION,
        routers=[
            api.router(deps, service.current_caller),
            console.router(deps, service.token_verifier),
        ],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )


def main() -> None:
    """Serve the audit service (`python -m confide_audit serve`, or with no command)."""
    settings = AuditSettings()  # from the environment
    run(lambda: create_app(settings), settings)
