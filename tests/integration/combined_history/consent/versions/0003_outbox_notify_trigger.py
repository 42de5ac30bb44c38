"""outbox notify trigger: the database wakes the relay when outbox rows are inserted

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:50:00.000000

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """CREATE OR REPLACE FUNCTION confide_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('confide_outbox', '');
    RETURN NULL;
END
$$"""
    )
    op.execute(
        """CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION confide_outbox_notify()"""
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION confide_outbox_notify()")
