"""Alembic environment of the audit service: the toolkit's history (core, and the revoked
sessions whose tokens it refuses), then the service's own tables."""

from confide_audit import store
from confide_toolkit.migrations import SESSION_REVOCATIONS, run_migrations

run_migrations(store.metadata, toolkit_parts=[SESSION_REVOCATIONS])
