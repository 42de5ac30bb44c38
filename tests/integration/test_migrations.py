"""Each service's migrations against its models on a real PostgreSQL: a model changed without a
migration (or a migration without its model change) fails here, not at a deployment.

The services are found, not listed: every `services/<name>/src/confide_<name>/migrations/`. A
service's database holds the toolkit's history (core, and the parts the service opted into) and
the service's own; together they must create exactly the toolkit's models and the service's."""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from alembic import command
from confide_testing import migration_drift
from confide_toolkit.database import libpq_url, toolkit_metadata
from confide_toolkit.migrations import (
    COMBINED_HISTORY_HEAD,
    TOOLKIT_PARTS,
    alembic_config,
    installed_toolkit_parts,
    upgrade_database,
)
from sqlalchemy import Column, MetaData, Table

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMBINED_HISTORY = Path(__file__).parent / "combined_history"
"""Identity's and consent's histories as they were when they also created the toolkit's
tables, frozen: they build the databases an existing development stack still has."""


@dataclass(frozen=True)
class ServiceSchema:
    package: str
    migrations: Path

    @property
    def name(self) -> str:
        return self.package.removeprefix("confide_")

    @property
    def own_tables(self) -> MetaData:
        store: Any = importlib.import_module(f"{self.package}.store")
        metadata: MetaData = store.metadata
        return metadata


SERVICES = [
    ServiceSchema(env.parent.parent.name, env.parent)
    for env in sorted(ROOT.glob("services/*/src/confide_*/migrations/env.py"))
]


@pytest.fixture(params=SERVICES, ids=lambda service: service.name)
def service(request: pytest.FixtureRequest) -> ServiceSchema:
    schema: ServiceSchema = request.param
    return schema


@pytest.fixture
def head_database(database_url: str, service: ServiceSchema) -> str:
    """A fresh database upgraded to the newest revision of the toolkit's and service's history."""
    upgrade_database(database_url, service.migrations)
    return database_url


def execute(database_url: str, *statements: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            cursor = conn.execute(statement)
            if cursor.description is not None:
                rows += cursor.fetchall()
        return rows


def parts_in(database_url: str) -> set[str]:
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return installed_toolkit_parts(connection)
    finally:
        engine.dispose()


def drift(database_url: str, service: ServiceSchema) -> list[Any]:
    """The difference between the database and the models of the toolkit's parts it has and
    of the service's own tables."""
    parts = parts_in(database_url)
    assert "core" in parts
    left_out = {
        table.name
        for part in TOOLKIT_PARTS.values()
        if part.name not in parts
        for table in part.tables
    }
    return migration_drift(database_url, [toolkit_metadata, service.own_tables], leave_out=left_out)


def described(differences: list[Any]) -> set[str]:
    """Each difference as `kind table` or `kind table.column`, for readable assertions."""
    found = set()
    for difference in differences:
        # Alembic groups the changes to one column in a list.
        for change in difference if isinstance(difference, list) else [difference]:
            kind = change[0]
            if kind in {"add_table", "remove_table"}:
                found.add(f"{kind} {change[1].name}")
            elif kind in {"add_column", "remove_column"}:
                found.add(f"{kind} {change[2]}.{change[3].name}")
            elif kind.startswith("modify_"):
                found.add(f"{kind} {change[2]}.{change[3]}")
            else:
                found.add(kind)
    return found


def a_plain_column(metadata: MetaData) -> tuple[str, str]:
    """A column of the service's own tables in no key or index: dropping it drops nothing
    else."""
    for table in sorted(metadata.tables.values(), key=lambda t: t.name):
        constrained = {c.name for index in table.indexes for c in index.columns}
        constrained |= {c.name for con in table.constraints for c in getattr(con, "columns", [])}
        for column in table.columns:
            if column.name not in constrained:
                return table.name, column.name
    raise AssertionError("the service has no column outside its keys and indexes")


def test_the_services_are_found() -> None:
    assert {service.name for service in SERVICES} >= {"identity", "consent"}


def test_migrations_at_head_create_exactly_the_models(
    head_database: str, service: ServiceSchema
) -> None:
    assert drift(head_database, service) == []


def test_a_schema_that_differs_from_the_models_is_reported(
    head_database: str, service: ServiceSchema
) -> None:
    table, column = a_plain_column(service.own_tables)
    execute(
        head_database,
        f"ALTER TABLE {table} DROP COLUMN {column}",
        "ALTER TABLE outbox ALTER COLUMN topic TYPE text",
        "CREATE TABLE stray (id integer)",
    )
    assert described(drift(head_database, service)) == {
        f"add_column {table}.{column}",
        "modify_type outbox.topic",
        "remove_table stray",
    }


def test_migrations_create_the_trigger_that_wakes_the_relay(head_database: str) -> None:
    triggers = execute(
        head_database,
        "SELECT t.tgname, p.proname, t.tgenabled FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'outbox'::regclass AND NOT t.tgisinternal",
    )
    # 'O': enabled in the ordinary (origin) replication role.
    assert triggers == [("outbox_notify", "confide_outbox_notify", "O")]


# --- databases built by the combined history -------------------------------------------------

COMBINED = [service for service in SERVICES if (COMBINED_HISTORY / service.name).is_dir()]


@pytest.mark.parametrize("old", COMBINED, ids=lambda service: service.name)
def test_a_database_of_the_combined_history_is_adopted_and_keeps_its_data(
    database_url: str, old: ServiceSchema
) -> None:
    upgrade_database(database_url, COMBINED_HISTORY / old.name)
    event_id = uuid.uuid4()
    execute(
        database_url,
        "INSERT INTO stored_events (stream_id, stream_type, version, event_id, event_type, "
        f"data, recorded_at) VALUES (gen_random_uuid(), 'account', 1, '{event_id}', "
        "'AccountClosed', '{}', now())",
    )

    upgrade_database(database_url, old.migrations)

    assert execute(database_url, "SELECT version_num FROM alembic_version") == [("0001",)]
    # The optional parts the service opts into today come on top (consent: session_revocations).
    assert "core" in parts_in(database_url)
    assert drift(database_url, old) == []
    # The event recorded before is kept, as version 1 of its type.
    assert execute(
        database_url, f"SELECT schema_version FROM stored_events WHERE event_id = '{event_id}'"
    ) == [(1,)]
    # Adopted once: the next start finds the toolkit's history and changes nothing.
    upgrade_database(database_url, old.migrations)
    assert drift(database_url, old) == []


def test_only_the_head_of_the_combined_history_is_adopted(database_url: str) -> None:
    older = "0002"
    assert older != COMBINED_HISTORY_HEAD
    config = alembic_config(database_url, COMBINED_HISTORY / "identity")
    command.upgrade(config, older)
    identity = next(service for service in SERVICES if service.name == "identity")
    with pytest.raises(RuntimeError, match="only 0003 can be adopted"):
        upgrade_database(database_url, identity.migrations)


def test_a_new_service_gets_the_toolkits_tables_without_writing_them(
    database_url: str, tmp_path: Path
) -> None:
    """A new service's first revision, autogenerated, holds its own tables only; upgrading
    still gives it every toolkit table and the relay's trigger."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "script.py.mako").write_text(
        (SERVICES[0].migrations / "script.py.mako").read_text()
    )
    (tmp_path / "env.py").write_text(
        "from confide_toolkit.database import NAMING_CONVENTION\n"
        "from confide_toolkit.migrations import run_migrations\n"
        "from sqlalchemy import Column, Integer, MetaData, Table\n"
        "metadata = MetaData(naming_convention=NAMING_CONVENTION)\n"
        "Table('notes', metadata, Column('note_id', Integer, primary_key=True))\n"
        "run_migrations(metadata)\n"
    )
    command.revision(alembic_config(database_url, tmp_path), "initial", autogenerate=True)
    (revision,) = (tmp_path / "versions").glob("*.py")
    written = revision.read_text()
    assert "op.create_table('notes'" in written
    assert "stored_events" not in written
    assert "outbox" not in written
    assert "toolkit_alembic_version" not in written

    upgrade_database(database_url, tmp_path)
    notes = MetaData()
    Table("notes", notes, Column("note_id", sqlalchemy.Integer, primary_key=True))
    assert (
        migration_drift(
            database_url,
            [toolkit_metadata, notes],
            leave_out={"consent_view", "session_revocations"},
        )
        == []
    )
    assert execute(
        database_url, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'outbox'::regclass"
    ) == [("outbox_notify",)]
