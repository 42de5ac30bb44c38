"""Alembic environment of the consent service: the toolkit's tables and the service's own."""

from confide_consent import store
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.migrations import run_migrations

run_migrations([toolkit_metadata, store.metadata])
