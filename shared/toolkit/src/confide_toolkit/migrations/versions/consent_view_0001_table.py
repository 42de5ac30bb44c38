"""consent_view: a service's own read model of consents (`confide_toolkit.consents`), for the
services that opt into it

Revision ID: consent_view_0001
Revises:
Create Date: 2026-11-30 16:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "consent_view_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("consent_view",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consent_view",
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=True),
        sa.Column("recipient_id", sa.Uuid(), nullable=True),
        sa.Column("data_categories", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("policy_version", sa.String(length=32), nullable=True),
        sa.Column("policy_hash", sa.String(length=64), nullable=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("consent_id", name=op.f("pk_consent_view")),
    )
    op.create_index(
        "ix_consent_view_subject_purpose", "consent_view", ["subject_id", "purpose"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_consent_view_subject_purpose", table_name="consent_view")
    op.drop_table("consent_view")
