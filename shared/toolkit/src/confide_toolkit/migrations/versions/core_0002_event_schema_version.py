"""core: each stored domain event names the schema version it was written in (every event
recorded before is version 1)

Revision ID: core_0002
Revises: core_0001
Create Date: 2026-11-30 16:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "core_0002"
down_revision: str | Sequence[str] | None = "core_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "stored_events",
        sa.Column("schema_version", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("stored_events", "schema_version")
