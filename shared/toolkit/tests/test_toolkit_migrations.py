"""The toolkit's own migration history: its core in every service's database, its optional
parts (consent_view, session_revocations) only in those of the services that opt into them."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy
from alembic.migration import MigrationContext
from alembic.operations import Operations
from confide_testing import migration_drift
from confide_toolkit import revocations  # noqa: F401 (its table is in toolkit_metadata)
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.migrations import installed_toolkit_parts, upgrade_database
from confide_toolkit.migrations.versions import core_0004_exact_positions as exact_positions
from confide_toolkit.migrations.versions import core_0005_relay_progress as relay_progress
from confide_toolkit.migrations.versions import core_0006_notify_a_waiting_relay as notify_waiting
from confide_toolkit.migrations.versions import (
    core_0007_outbox_writers_wait_for_flush as outbox_flush,
)

pytestmark = pytest.mark.integration

PROBE_MIGRATIONS = Path(__file__).parent / "service_migrations"


def probe_migrations(folder: Path, env: str) -> Path:
    """The probe service's migrations with another env.py."""
    shutil.copytree(PROBE_MIGRATIONS / "versions", folder / "versions")
    (folder / "env.py").write_text(env)
    return folder


def parts_and_tables(database_url: str) -> tuple[set[str], set[str]]:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            return installed_toolkit_parts(connection), tables
    finally:
        engine.dispose()


OPTS_IN = """from confide_toolkit.migrations import CONSENT_VIEW, run_migrations
from sqlalchemy import MetaData

run_migrations(MetaData(), toolkit_parts=[CONSENT_VIEW])
"""


OPTS_INTO_REVOCATIONS = """from confide_toolkit import migrations
from sqlalchemy import MetaData

migrations.run_migrations(MetaData(), toolkit_parts=[migrations.SESSION_REVOCATIONS])
"""

NOT_CONSENT_VIEW = {"session_revocations"}
"""The optional tables a service that opts into consent_view alone does not have."""


def test_a_service_has_the_core_and_not_the_parts_it_did_not_opt_into(database_url: str) -> None:
    upgrade_database(database_url, PROBE_MIGRATIONS)
    parts, tables = parts_and_tables(database_url)
    assert parts == {"core"}
    assert "consent_view" not in tables and "session_revocations" not in tables
    assert (
        migration_drift(
            database_url, [toolkit_metadata], leave_out={"consent_view", "session_revocations"}
        )
        == []
    )


def test_a_service_that_opts_into_consent_view_gets_it(database_url: str, tmp_path: Path) -> None:
    upgrade_database(database_url, probe_migrations(tmp_path, OPTS_IN))
    parts, _ = parts_and_tables(database_url)
    assert parts == {"core", "consent_view"}
    assert migration_drift(database_url, [toolkit_metadata], leave_out=NOT_CONSENT_VIEW) == []


def test_a_service_that_opts_into_session_revocations_gets_it(
    database_url: str, tmp_path: Path
) -> None:
    upgrade_database(database_url, probe_migrations(tmp_path, OPTS_INTO_REVOCATIONS))
    parts, tables = parts_and_tables(database_url)
    assert parts == {"core", "session_revocations"}
    assert "consent_view" not in tables
    assert migration_drift(database_url, [toolkit_metadata], leave_out={"consent_view"}) == []


def test_a_service_that_opts_in_later_gets_the_part_at_its_next_start(
    database_url: str, tmp_path: Path
) -> None:
    upgrade_database(database_url, PROBE_MIGRATIONS)
    upgrade_database(database_url, probe_migrations(tmp_path, OPTS_IN))
    parts, _ = parts_and_tables(database_url)
    assert parts == {"core", "consent_view"}
    assert migration_drift(database_url, [toolkit_metadata], leave_out=NOT_CONSENT_VIEW) == []


def back_to(connection: sqlalchemy.Connection, revision: str, *newer: ModuleType) -> None:
    """Take a database at the toolkit's head back to `revision` by the downgrades of the
    `newer` revisions (newest first), as a database of that time would be."""
    with Operations.context(MigrationContext.configure(connection)):
        for migration in newer:
            migration.downgrade()
    connection.execute(
        sqlalchemy.text(
            "UPDATE toolkit_alembic_version SET version_num = :revision WHERE version_num = :head"
        ),
        {"revision": revision, "head": newer[0].revision},
    )


def test_positions_start_past_what_the_inbox_recorded_when_it_goes(database_url: str) -> None:
    """A database from before exact positions (core_0003): each position was written at most
    once a second, so it may lag what the inbox recorded as applied. The upgrade moves each
    past the inbox's last event before the inbox goes, so nothing is applied twice."""
    upgrade_database(database_url, PROBE_MIGRATIONS)
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.begin() as connection:
            # Back to core_0003, with what a consumer of that time left behind.
            back_to(
                connection,
                "core_0003",
                outbox_flush,
                notify_waiting,
                relay_progress,
                exact_positions,
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO inbox (consumer, event_id, event_type, topic, partition,"
                    ' "offset") VALUES'
                    " ('c', gen_random_uuid(), 't', 'a.events', 0, 41),"
                    " ('c', gen_random_uuid(), 't', 'a.events', 0, 57),"
                    " ('c', gen_random_uuid(), 't', 'a.events', 1, 3)"
                )
            )
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO consumer_positions (consumer, topic, partition, next_offset)"
                    " VALUES ('c', 'a.events', 0, 50), ('c', 'a.events', 2, 9)"
                )
            )
        upgrade_database(database_url, PROBE_MIGRATIONS)
        with engine.connect() as connection:
            positions = connection.execute(
                sqlalchemy.text(
                    "SELECT partition, next_offset FROM consumer_positions ORDER BY partition"
                )
            ).all()
            tables = set(sqlalchemy.inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert [tuple(row) for row in positions] == [(0, 58), (1, 4), (2, 9)]
    assert "inbox" not in tables and "relay_fences" in tables


def test_rows_an_outbox_held_before_the_relay_progress_stay_pending(database_url: str) -> None:
    """A database from before the relay's progress (core_0004): its relay deleted what Kafka
    acknowledged, so whatever the outbox holds is unpublished and must stay above the
    progress the upgrade starts, which starts just below them (not at 0: the relay would
    take every id below as a transaction still running)."""
    upgrade_database(database_url, PROBE_MIGRATIONS)
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.begin() as connection:
            back_to(connection, "core_0004", outbox_flush, notify_waiting, relay_progress)
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO outbox (event_id, topic, partition_key, value, headers,"
                    " created_at) SELECT gen_random_uuid(), 'a.events', 'k', 'v', '[]', now()"
                    " FROM generate_series(1, 5)"
                )
            )
            # The old relay published and deleted the first two.
            connection.execute(
                sqlalchemy.text(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)"
                )
            )
            oldest = connection.scalar(sqlalchemy.text("SELECT min(id) FROM outbox"))
        upgrade_database(database_url, PROBE_MIGRATIONS)
        with engine.connect() as connection:
            progress = connection.scalar(
                sqlalchemy.text("SELECT published_through FROM relay_progress")
            )
            pending = connection.scalar(
                sqlalchemy.text("SELECT count(*) FROM outbox WHERE id > :p"), {"p": progress}
            )
    finally:
        engine.dispose()
    assert pending == 3
    assert progress == oldest - 1
