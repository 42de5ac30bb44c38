"""Alembic environment of the messaging service: the toolkit's history (core, the
`consent_view` it checks before each disclosure, and the revoked sessions whose tokens it
refuses), then the service's own tables."""

from confide_messaging import store
from confide_toolkit.migrations import CONSENT_VIEW, SESSION_REVOCATIONS, run_migrations

run_migrations(store.metadata, toolkit_parts=[CONSENT_VIEW, SESSION_REVOCATIONS])
