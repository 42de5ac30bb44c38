"""Alembic environment of the consent service: the toolkit's history (core, and the revoked
sessions whose tokens it refuses), then the service's own tables. (Consent keeps its own
ledger, not the toolkit's `consent_view`.)"""

from confide_consent import store
from confide_toolkit.migrations import SESSION_REVOCATIONS, run_migrations

run_migrations(store.metadata, toolkit_parts=[SESSION_REVOCATIONS])
