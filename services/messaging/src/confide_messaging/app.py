"""Wiring of the messaging service: settings, the toolkit runtime, handlers' dependencies,
consumers, routes and how refusals answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from confide_events.messaging import (
    ConversationStarted,
    MessageSent,
    RecordAccessed,
    RecordsDisclosed,
    SessionNoteRecorded,
    SubjectDataShredded,
)
from confide_toolkit.clock import Clock
from confide_toolkit.service import Service, run
from fastapi import FastAPI

from confide_messaging import api, consumers
from confide_messaging.handlers import Dependencies
from confide_messaging.problems import PROBLEM_TYPES
from confide_messaging.settings import MessagingSettings
from confide_messaging.store import (
    Conversations,
    conversations,
    messages,
    project_conversation,
    session_notes,
)

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = """Confidential conversations between a client and their therapist, session
notes, and disclosures to third parties on the client's consent.

Message bodies and notes are stored only encrypted, each under the client's own key for its
category (`messaging.messages`, `messaging.session_notes`); only the two participants read a
conversation (notes: its therapist), and to anyone else it does not exist (404). Every read of
a note is audited (`RecordAccessed`). A disclosure needs a `share_with_provider` consent valid
at that moment for that recipient and those categories (messaging keeps its own copy of the
consents, from `consent.events`); its bundle is sealed under a one-time key that only the
download token carries."""


def build(settings: MessagingSettings, clock: Clock | None = None) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies, built once."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    deps = Dependencies(
        engine=service.engine,
        conversations=Conversations(service.clock),
        keyring=service.keyring,
        outbox=service.outbox,
        clock=service.clock,
        disclosure_lifetime=timedelta(days=settings.disclosure_days),
    )
    return service, deps


def create_app(settings: MessagingSettings | None = None, clock: Clock | None = None) -> FastAPI:
    """The messaging service's application; `app.state.service` and `app.state.deps` expose its
    runtime to tests and tools."""
    settings = settings or MessagingSettings()  # from the environment
    service, deps = build(settings, clock)
    # A signed-out or closed session's tokens are refused here too, not only at identity.
    service.refuse_revoked_sessions()
    consumers.subscribe(service, deps)
    # Rebuilt from its own event store by `python -m confide_toolkit.read_models rebuild messaging`.
    service.read_model(
        "conversations",
        tables=[conversations, messages, session_notes],
        store=deps.conversations.events,
        projection=project_conversation,
    )
    service.document_publications(
        [
            ConversationStarted,
            MessageSent,
            SessionNoteRecorded,
            RecordAccessed,
            RecordsDisclosed,
            SubjectDataShredded,
        ]
    )
    return service.create_app(
        title="Confide messaging",
        description=DESCRIPTION,
        routers=[api.router(deps, service.current_caller)],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )


def main() -> None:
    """Serve the messaging service (`python -m confide_messaging`)."""
    settings = MessagingSettings()  # from the environment
    run(lambda: create_app(settings), settings)
