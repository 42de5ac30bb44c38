"""core: the outbox trigger notifies only a relay that waits for rows

A NOTIFY holds a lock on the whole PostgreSQL cluster from before its transaction's commit
until after the commit's flush, so transactions that notify cannot share a flush. The trigger
now notifies only while the active relay waits (it holds `outbox.RELAY_WAITING_KEY`); a relay
busy publishing polls instead. A relay of the version before never holds that key, so with this
function it is woken by its fallback poll only: upgrade the relay with the database.

Revision ID: core_0006
Revises: core_0005
Create Date: 2026-12-01 21:30:00.000000

"""

from collections.abc import Sequence

from alembic import op
from confide_toolkit import outbox
from confide_toolkit.migrations.versions import core_0001_tables

revision: str = "core_0006"
down_revision: str | Sequence[str] | None = "core_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(outbox.NOTIFY_FUNCTION)


def downgrade() -> None:
    op.execute(core_0001_tables.NOTIFY_FUNCTION)
