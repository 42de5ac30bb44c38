"""Alembic environment of identity: the toolkit's tables and identity's own."""

from confide_identity import store
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.migrations import run_migrations

run_migrations([toolkit_metadata, store.metadata])
