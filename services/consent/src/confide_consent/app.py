"""Wiring of the consent service: settings, the toolkit runtime, handlers' dependencies,
consumers, routes and how refusals answer."""

from __future__ import annotations

from pathlib import Path

from confide_events.consent import ConsentGranted, ConsentRevoked
from confide_toolkit.clock import Clock
from confide_toolkit.service import Service, run
from fastapi import FastAPI

from confide_consent import api, consumers
from confide_consent.handlers import Dependencies
from confide_consent.problems import PROBLEM_TYPES
from confide_consent.receipts import ReceiptIssuer
from confide_consent.settings import ConsentSettings
from confide_consent.store import Ledgers, ReceiptKeys, consents, project_consents

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = """The consent ledger: what each person agreed to share, with whom, and when.

Every grant answers a consent receipt signed with the service's Ed25519 key (verify it with
`GET /v1/receipt-keys`); withdrawal is one `DELETE` and takes effect at once. Other services
never call this API: they keep their own read model from the `ConsentGranted` and
`ConsentRevoked` events on `consent.events` (`confide_toolkit.consents`).

Recipients are registered third parties (organisations): compliance staff register them with
`POST /v1/recipients` (a development stack starts with two, registered by
`python -m confide_consent.cli seed-dev-recipients`)."""


def build(settings: ConsentSettings, clock: Clock | None = None) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies, built once."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    deps = Dependencies(
        engine=service.engine,
        ledgers=Ledgers(service.clock),
        receipt_keys=ReceiptKeys(service.keyring, service.clock),
        outbox=service.outbox,
        clock=service.clock,
        issuer=ReceiptIssuer(
            controller=settings.receipt_controller,
            contact=settings.receipt_contact,
            jurisdiction=settings.receipt_jurisdiction,
        ),
    )
    return service, deps


def create_app(settings: ConsentSettings | None = None, clock: Clock | None = None) -> FastAPI:
    """The consent service's application; `app.state.service` and `app.state.deps` expose its
    runtime to tests and tools."""
    settings = settings or ConsentSettings()  # from the environment
    service, deps = build(settings, clock)
    # A signed-out or closed session's tokens are refused here too, not only at identity.
    service.refuse_revoked_sessions()
    consumers.subscribe(service, deps)
    # Rebuilt from its own event store by `python -m confide_toolkit.read_models rebuild consent`.
    service.read_model(
        "consents", tables=[consents], store=deps.ledgers.events, projection=project_consents
    )
    service.document_publications([ConsentGranted, ConsentRevoked])
    return service.create_app(
        title="Confide consent",
        description=DESCRIPTION,
        routers=[api.router(deps, service.current_caller)],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )


def main() -> None:
    """Serve the consent service (`python -m confide_consent`)."""
    settings = ConsentSettings()  # from the environment
    run(lambda: create_app(settings), settings)
