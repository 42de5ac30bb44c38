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
from confide_toolkit.migrations.versions import core_0001_tables

revision: str = "core_0006"
down_revision: str | Sequence[str] | None = "core_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


NOTIFY_FUNCTION = """CREATE OR REPLACE FUNCTION confide_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(491327873401) THEN
        PERFORM pg_notify('confide_outbox', '');
    END IF;
    RETURN NULL;
END
$$"""
"""The function as this revision made it (`outbox.RELAY_WAITING_KEY`, `outbox.OUTBOX_CHANNEL`)."""


def upgrade() -> None:
    op.execute(NOTIFY_FUNCTION)


def downgrade() -> None:
    op.execute(core_0001_tables.NOTIFY_FUNCTION)
