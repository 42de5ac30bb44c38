"""core: consumers know what they applied from their exact position and the relay fences, not
from an inbox row per event; the relay keeps its fences

Each position is moved to just past the last event its inbox recorded (what the data holds),
then the inbox goes: from here on a position moves with every batch, exactly.

Revision ID: core_0004
Revises: core_0003
Create Date: 2026-11-30 18:45:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "core_0004"
down_revision: str | Sequence[str] | None = "core_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "consumer_positions",
        sa.Column(
            "fences",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    # The inbox recorded every applied event with its place: a position was written at most
    # once a second, so it may lag what the inbox says was applied, never lead it.
    op.execute(
        """INSERT INTO consumer_positions (consumer, topic, partition, next_offset)
        SELECT consumer, topic, partition, max("offset") + 1 FROM inbox
        GROUP BY consumer, topic, partition
        ON CONFLICT (consumer, topic, partition) DO UPDATE
        SET next_offset = greatest(consumer_positions.next_offset, excluded.next_offset)"""
    )
    op.drop_table("inbox")
    op.create_table(
        "relay_fences",
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("source", sa.UUID(), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("scan_from", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("topic", "partition", name=op.f("pk_relay_fences")),
    )


def downgrade() -> None:
    op.drop_table("relay_fences")
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
    op.drop_column("consumer_positions", "fences")
