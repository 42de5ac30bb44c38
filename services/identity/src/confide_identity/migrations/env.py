"""Alembic environment of identity: the toolkit's history (core), then identity's own tables."""

from confide_identity import store
from confide_toolkit.migrations import run_migrations

run_migrations(store.metadata)
