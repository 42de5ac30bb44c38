"""The toolkit's own migration history: its core in every service's database, its optional
parts (consent_view, session_revocations) only in those of the services that opt into them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy
from confide_testing import migration_drift
from confide_toolkit import revocations  # noqa: F401 (its table is in toolkit_metadata)
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.migrations import installed_toolkit_parts, upgrade_database

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
