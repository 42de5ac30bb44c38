"""Alembic environment of the consent service: the toolkit's history (core), then the
service's own tables. (Consent keeps its own ledger, not the toolkit's `consent_view`.)"""

from confide_consent import store
from confide_toolkit.migrations import run_migrations

run_migrations(store.metadata)
