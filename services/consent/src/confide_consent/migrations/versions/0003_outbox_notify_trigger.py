"""outbox notify trigger: the database wakes the relay when outbox rows are inserted

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:50:00.000000

"""

from collections.abc import Sequence

from confide_toolkit.migrations import create_outbox_notify_trigger, drop_outbox_notify_trigger

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_outbox_notify_trigger()


def downgrade() -> None:
    drop_outbox_notify_trigger()
