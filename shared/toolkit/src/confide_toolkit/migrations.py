"""Alembic migrations per service: each service keeps its own `migrations/` folder whose
revisions create the toolkit's tables and its own. Services upgrade their database at start-up
under an advisory lock, so replicas starting together do not race."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context, op
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.dialects import postgresql

# Every service runs on these, so their tables are always in `toolkit_metadata` when a
# service's migrations run; a module's tables exist only once it is imported.
from confide_toolkit import auth, event_store, inbox, keyring, outbox  # noqa: F401

MIGRATION_LOCK_KEY = 0x6D6967726174  # "migrat"


def alembic_config(database_url: str, script_location: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str, script_location: Path) -> None:
    """Bring the service's database to the newest revision (blocking; call it in a thread)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as lock_conn:
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            try:
                command.upgrade(alembic_config(database_url, script_location), "head")
            finally:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()


def run_migrations(target_metadata: Sequence[MetaData]) -> None:
    """The body of a service's `migrations/env.py` (online mode, synchronous psycopg).

    The core toolkit tables (event store, outbox, inbox, keyring, signing keys) are always
    registered; a service that uses an optional toolkit read model (consents) imports it
    in its env.py."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no sqlalchemy.url: run migrations through upgrade_database()")
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=list(target_metadata))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def make_revision(database_url: str, script_location: Path, message: str) -> None:
    """Autogenerate a new revision from the difference between the models and a database
    that is at head (for developers: `python -m confide_toolkit.migrations`)."""
    upgrade_database(database_url, script_location)
    command.revision(
        alembic_config(database_url, script_location), message=message, autogenerate=True
    )


# --- the toolkit's schema changes -----------------------------------------------------------
# Each service's first revision created the toolkit's tables as they were then. A later change
# to them is a function here that one new revision of every service calls, so the DDL is
# written once; a released function is never edited (a further change is a new function).


def create_stream_snapshots() -> None:
    """2026-11: the event store's snapshots (`event_store.stream_snapshots`)."""
    op.create_table(
        "stream_snapshots",
        sa.Column("stream_id", sa.UUID(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("state", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_stream_snapshots")),
    )


def drop_stream_snapshots() -> None:
    op.drop_table("stream_snapshots")


def create_outbox_notify_trigger() -> None:
    """2026-11: the outbox wakes the relay with a statement-level trigger, so that an event
    costs one plain INSERT (before, each insert rode in a CTE of `SELECT pg_notify(...)`).
    The DDL is `outbox.NOTIFY_FUNCTION` and `outbox.NOTIFY_TRIGGER`, which `create_all` also
    runs; like this function, they are never edited once released."""
    op.execute(outbox.NOTIFY_FUNCTION)
    op.execute(outbox.NOTIFY_TRIGGER)


def drop_outbox_notify_trigger() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION confide_outbox_notify()")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Autogenerate a service's next migration.")
    parser.add_argument("script_location", type=Path, help="the service's migrations/ folder")
    parser.add_argument("message")
    parser.add_argument("--database-url", required=True, help="an empty scratch database")
    args = parser.parse_args()
    make_revision(args.database_url, args.script_location, args.message)
