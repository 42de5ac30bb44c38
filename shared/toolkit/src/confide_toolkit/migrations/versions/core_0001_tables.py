"""core: the toolkit's tables as every service had them (event store and its snapshots,
outbox and the trigger that wakes the relay, inbox, keyring, published signing keys)

Revision ID: core_0001
Revises:
Create Date: 2026-11-30 16:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "core_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("core",)
depends_on: str | Sequence[str] | None = None

NOTIFY_FUNCTION = """CREATE OR REPLACE FUNCTION confide_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('confide_outbox', '');
    RETURN NULL;
END
$$"""
"""The relay's wake-up as this revision made it: a NOTIFY for every INSERT into `outbox`
(core_0006 notifies only a waiting relay)."""
NOTIFY_TRIGGER = """CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION confide_outbox_notify()"""


def upgrade() -> None:
    op.create_table(
        "data_key_tombstones",
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("shredded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "subject_id", "category", "key_id", name=op.f("pk_data_key_tombstones")
        ),
    )
    op.create_table(
        "data_keys",
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_data_keys")),
        sa.UniqueConstraint("subject_id", "category", name=op.f("uq_data_keys_subject_id")),
    )
    op.create_index("ix_data_keys_kek_version", "data_keys", ["kek_version"], unique=False)
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column(
            "handled_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition_key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
    )
    # The relay's wake-up (see `confide_toolkit.outbox`).
    op.execute(NOTIFY_FUNCTION)
    op.execute(NOTIFY_TRIGGER)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text(), nullable=False),
        sa.Column("public_jwk", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    op.create_table(
        "stored_events",
        sa.Column("position", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("stream_id", sa.UUID(), nullable=False),
        sa.Column("stream_type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_stored_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_stored_events_event_id")),
        sa.UniqueConstraint("stream_id", "version", name="uq_stored_events_stream_version"),
    )
    op.create_table(
        "stream_snapshots",
        sa.Column("stream_id", sa.UUID(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("state", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_stream_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("stream_snapshots")
    op.drop_table("stored_events")
    op.drop_table("signing_keys")
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION confide_outbox_notify()")
    op.drop_table("outbox")
    op.drop_table("inbox")
    op.drop_index("ix_data_keys_kek_version", table_name="data_keys")
    op.drop_table("data_keys")
    op.drop_table("data_key_tombstones")
