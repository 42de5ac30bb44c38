"""Each service's migrations against its models on a real PostgreSQL: a model changed without a
migration (or a migration without its model change) fails here, not at a deployment."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confide_testing import migration_drift
from confide_toolkit.consents import consent_view
from confide_toolkit.database import libpq_url, toolkit_metadata
from confide_toolkit.migrations import upgrade_database
from sqlalchemy import MetaData

pytestmark = pytest.mark.integration

NOT_CREATED = {consent_view.name}
"""A toolkit read model that neither service keeps (in toolkit_metadata once imported)."""


@dataclass(frozen=True)
class ServiceSchema:
    name: str
    column_to_drop: tuple[str, str]
    """A column of the service's own tables, dropped to show that drift is caught."""
    toolkit_column_to_retype: tuple[str, str]

    @property
    def migrations(self) -> Path:
        app: Any = importlib.import_module(f"confide_{self.name}.app")
        return Path(app.MIGRATIONS)

    @property
    def models(self) -> list[MetaData]:
        """What the migrations must create: the core toolkit tables and the service's own."""
        store: Any = importlib.import_module(f"confide_{self.name}.store")
        return [toolkit_metadata, store.metadata]


SERVICES = [
    ServiceSchema("identity", ("accounts", "password_changed_at"), ("inbox", "event_type")),
    ServiceSchema("consent", ("consents", "receipt_jws"), ("outbox", "topic")),
]


@pytest.fixture(params=SERVICES, ids=lambda service: service.name)
def service(request: pytest.FixtureRequest) -> ServiceSchema:
    schema: ServiceSchema = request.param
    return schema


@pytest.fixture
def head_database(database_url: str, service: ServiceSchema) -> str:
    """A fresh database upgraded to the service's newest revision."""
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


def described(drift: list[Any]) -> set[str]:
    """Each difference as `kind table` or `kind table.column`, for readable assertions."""
    found = set()
    for difference in drift:
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


def test_migrations_at_head_create_exactly_the_models(
    head_database: str, service: ServiceSchema
) -> None:
    assert migration_drift(head_database, service.models, leave_out=NOT_CREATED) == []


def test_a_schema_that_differs_from_the_models_is_reported(
    head_database: str, service: ServiceSchema
) -> None:
    table, column = service.column_to_drop
    toolkit_table, toolkit_column = service.toolkit_column_to_retype
    execute(
        head_database,
        f"ALTER TABLE {table} DROP COLUMN {column}",
        f"ALTER TABLE {toolkit_table} ALTER COLUMN {toolkit_column} TYPE text",
        "CREATE TABLE stray (id integer)",
    )
    drift = migration_drift(head_database, service.models, leave_out=NOT_CREATED)
    assert described(drift) == {
        f"add_column {table}.{column}",
        f"modify_type {toolkit_table}.{toolkit_column}",
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
