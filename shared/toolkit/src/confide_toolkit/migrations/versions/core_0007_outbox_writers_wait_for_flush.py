"""core: a transaction that writes outbox rows waits for its flush at commit

A consumer's batch commits without waiting for PostgreSQL to flush it (`synchronous_commit =
off` for that transaction, `positions.claim`): what it wrote is rebuilt from the events it
consumed if a crash loses it. A batch whose handlers emit follow-up events must wait all the
same, or a relay could publish events that a crash then takes back and the batch, applied
again, emits anew under other ids. The outbox's trigger now turns the flush back on for any
transaction that inserts outbox rows, whoever began it.

Revision ID: core_0007
Revises: core_0006
Create Date: 2026-12-02 03:30:00.000000

"""

from collections.abc import Sequence

from alembic import op
from confide_toolkit import outbox
from confide_toolkit.migrations.versions import core_0006_notify_a_waiting_relay

revision: str = "core_0007"
down_revision: str | Sequence[str] | None = "core_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(outbox.NOTIFY_FUNCTION)


def downgrade() -> None:
    op.execute(core_0006_notify_a_waiting_relay.NOTIFY_FUNCTION)
