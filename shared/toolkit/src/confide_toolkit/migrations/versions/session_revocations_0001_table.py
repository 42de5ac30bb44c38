"""session_revocations: a service's own read model of the sessions identity ended
(`confide_toolkit.revocations`), for the services that opt into it

Revision ID: session_revocations_0001
Revises:
Create Date: 2026-11-30 18:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "session_revocations_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("session_revocations",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_revocations",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("forget_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session_revocations")),
    )
    op.create_index(
        "ix_session_revocations_forget_after",
        "session_revocations",
        ["forget_after"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_session_revocations_forget_after", table_name="session_revocations")
    op.drop_table("session_revocations")
