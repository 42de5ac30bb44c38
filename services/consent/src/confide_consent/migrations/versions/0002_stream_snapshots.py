"""stream snapshots: the event store keeps aggregates' snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 23:30:00.000000

"""

from collections.abc import Sequence

from confide_toolkit.migrations import create_stream_snapshots, drop_stream_snapshots

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_stream_snapshots()


def downgrade() -> None:
    drop_stream_snapshots()
