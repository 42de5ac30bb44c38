"""core: the relay records how far it published instead of deleting each row it sent

`relay_progress` holds the outbox id up to which every row is published; rows at or below it
are dropped in bulk (TRUNCATE when the relay is caught up), not one DELETE per event. The
outbox's unique index on event_id goes with the row-by-row design: event ids are uuid7s the
toolkit generates, and only a relay activation's fence looks rows up by them, among the few
rows above the progress.

Everything an outbox holds when this runs is unpublished as far as the old relay knew (it
deleted what Kafka acknowledged), so the progress starts just below its oldest row, or at the
last id handed out when it is empty (the relay reads above it and treats an id it never saw
below a published one as a transaction still running, so the progress must not start far
below the ids in use); what the old relay published but had not deleted yet, the next
activation's fence finds on the topic, as before.

Revision ID: core_0005
Revises: core_0004
Create Date: 2026-12-01 05:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "core_0005"
down_revision: str | Sequence[str] | None = "core_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_progress",
        sa.Column("singleton", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("published_through", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("singleton", name=op.f("ck_relay_progress_singleton")),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_relay_progress")),
    )
    # Writers still inserting (a replica of the old version) finish first: their rows count.
    op.execute("LOCK TABLE outbox IN SHARE MODE")
    op.execute(
        """INSERT INTO relay_progress (published_through) SELECT coalesce(
            (SELECT min(id) - 1 FROM outbox),
            (SELECT last_value FROM pg_sequences WHERE format('%I.%I', schemaname, sequencename)
                ::regclass = pg_get_serial_sequence('outbox', 'id')::regclass),
            0)"""
    )
    op.drop_constraint(op.f("uq_outbox_event_id"), "outbox", type_="unique")


def downgrade() -> None:
    # The row-by-row relay expects only unpublished rows in the outbox.
    op.execute("DELETE FROM outbox WHERE id <= (SELECT published_through FROM relay_progress)")
    op.create_unique_constraint(op.f("uq_outbox_event_id"), "outbox", ["event_id"])
    op.drop_table("relay_progress")
