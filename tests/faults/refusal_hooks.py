"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by test_bad_input): a refused request
changes nothing. Before every request that may write (any method but GET), the rows of the
service's own tables are fingerprinted once they have stopped moving (work an earlier accepted
request set off has landed); when the answer is a 4xx, they are fingerprinted again
and any table whose rows changed fails the check, naming the table.

Left out, each for a reason: tables only the service's background work writes (its relay, its
consumers of other services' topics, its key maintenance and migrations), which move whatever a
request does; and identity's `sign_in_failures`, which a refused sign-in writes by design (it is
how repeated wrong passwords lock an address out)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
import schemathesis

WRITTEN_IN_THE_BACKGROUND = frozenset(
    {
        "alembic_version",
        "toolkit_alembic_version",
        "outbox",  # a request's rows are dropped by the relay once published
        "relay_fences",
        "relay_progress",  # the relay writes down how far it published, now and then
        "consumer_positions",
        "signing_keys",
        "session_revocations",
        "consent_view",
        "people",
        "payment_methods",  # retention's: learnt from billing.events (billing's own is a request's)
        "subject_clocks",
        "expiries",
        "trail_entries",
        "trail_heads",
        "trail_state",
    }
)
WRITTEN_BY_A_REFUSAL_BY_DESIGN = frozenset({"sign_in_failures"})
SETTLED_AFTER = 0.5
"""Seconds the rows must stay as they are before a request counts as starting from rest."""
SETTLE_WITHIN = 10.0

_connection: psycopg.Connection[Any] | None = None
_tables: list[str] = []
_before: dict[int, dict[str, tuple[Any, ...]]] = {}


def _database() -> psycopg.Connection[Any]:
    global _connection
    if _connection is None:
        url = os.environ["CONFIDE_REFUSAL_DATABASE_URL"].replace("+psycopg", "")
        _connection = psycopg.connect(url, autocommit=True)
        rows = _connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
        skipped = WRITTEN_IN_THE_BACKGROUND | WRITTEN_BY_A_REFUSAL_BY_DESIGN
        # billing keeps its own `payment_methods`, written by requests: it stays watched there.
        if os.environ.get("CONFIDE_REFUSAL_SERVICE") == "billing":
            skipped = skipped - {"payment_methods"}
        _tables.extend(name for (name,) in rows if name not in skipped)
    return _connection


def _fingerprint() -> dict[str, tuple[Any, ...]]:
    database = _database()
    found = {}
    for table in _tables:
        row = database.execute(
            f'SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM "{table}" t'
        ).fetchone()
        found[table] = tuple(row or ())
    return found


def _settled_fingerprint() -> dict[str, tuple[Any, ...]]:
    """The fingerprint once the rows stopped moving: work an earlier accepted request set off
    (retention's saga: expiries, owners' answers, a certificate) lands in the same tables a
    request writes, and must not be taken for the refused request's doing."""
    latest = _fingerprint()
    deadline = time.monotonic() + SETTLE_WITHIN
    while time.monotonic() < deadline:
        time.sleep(SETTLED_AFTER)
        again = _fingerprint()
        if again == latest:
            break
        latest = again
    return latest


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.method.upper() != "GET":
        _before[id(case)] = _settled_fingerprint()


@schemathesis.check
def refusal_changes_nothing(ctx: Any, response: Any, case: Any) -> bool | None:
    before = _before.pop(id(case), None)
    if before is None or not 400 <= response.status_code < 500:
        return None
    after = _fingerprint()
    changed = sorted(table for table, rows in before.items() if after.get(table) != rows)
    if changed:
        raise AssertionError(
            f"A refused request ({response.status_code}) changed rows of: {', '.join(changed)}"
        )
    return None
