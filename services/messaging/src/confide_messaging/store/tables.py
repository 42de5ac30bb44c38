"""The messaging service's tables (the module docstring of `store` says what each holds)."""

from __future__ import annotations

from confide_toolkit.database import NAMING_CONVENTION
from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData(naming_convention=NAMING_CONVENTION)

people = Table(
    "people",
    metadata,
    Column("subject_id", Uuid, primary_key=True),
    # Null only while an AccountClosed arrived before the registration it follows.
    Column("role", String(16), nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
)
"""Who is who, from identity's events: role and whether the account closed."""

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", Uuid, primary_key=True),
    Column("client_id", Uuid, nullable=False, index=True),
    Column("therapist_id", Uuid, nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("note_count", Integer, nullable=False),
    Column("last_message_at", DateTime(timezone=True), nullable=True),
)
"""Projection of the conversations: participants, times and counts."""

messages = Table(
    "messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("conversation_id", Uuid, nullable=False),
    Column("client_id", Uuid, nullable=False),
    Column("sender_id", Uuid, nullable=False),
    Column("sender_role", String(16), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    # A conversation's page of messages, newest first.
    Index("ix_messages_conversation_message", "conversation_id", "message_id"),
    Index("ix_messages_client_id", "client_id"),
)
"""Projection of the messages, each body sealed under its client's `messaging.messages` key."""

session_notes = Table(
    "session_notes",
    metadata,
    Column("note_id", Uuid, primary_key=True),
    Column("conversation_id", Uuid, nullable=False),
    Column("client_id", Uuid, nullable=False),
    Column("therapist_id", Uuid, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_session_notes_client_note", "client_id", "note_id"),
)
"""Projection of the notes, each sealed under its client's `messaging.session_notes` key."""

idempotent_posts = Table(
    "idempotent_posts",
    metadata,
    Column("sender_id", Uuid, nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("conversation_id", Uuid, nullable=False),
    Column("message_id", Uuid, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("sender_id", "idempotency_key"),
)
"""The first answer to each (sender, Idempotency-Key): a retried post answers it again."""

disclosures = Table(
    "disclosures",
    metadata,
    Column("disclosure_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("recipient_id", Uuid, nullable=False),
    Column("consent_id", Uuid, nullable=False),
    Column("data_categories", ARRAY(Text), nullable=False),
    Column("disclosed_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("token_sha256", LargeBinary, nullable=False, unique=True),
    # Null once downloaded: the bundle can be fetched once.
    Column("sealed_bundle", LargeBinary, nullable=True),
    Column("downloaded_at", DateTime(timezone=True), nullable=True),
)
"""Each disclosure, its consent, and its one-time bundle (sealed; the key is in the token)."""
