"""A dependency outage answers 503, never 500.

While the service's database or the Kafka broker cannot be reached, every request but the
operational ones (/healthz, /readyz, the API documents) answers `503 Service Unavailable` with
`Retry-After` and a problem type naming the dependency (`database-unavailable`,
`kafka-unavailable`), and /readyz says the same. Two things make it so:

- `Availability` checks the dependencies in the background, every `interval` seconds, and
  `RefuseWhileUnavailable` answers 503 at once while a check fails: a client is not kept
  waiting on connection attempts that cannot succeed, and a write is not accepted into an
  outbox that cannot drain. When a check passes again the service serves again by itself.
- Between two checks, a request may still meet the outage first: `database_outage` recognises
  the database driver's connection errors, and the problem handlers answer them with the same
  503 instead of a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import psycopg
from fastapi import FastAPI, Request
from sqlalchemy import exc as sa_exc
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from confide_toolkit.problem import Problem, internal_error, log_unexpected_error, problem_response

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS: Final = 5
"""What a 503 tells clients to wait: a database or broker restart takes seconds."""

OPERATIONAL_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/asyncapi.json", "/docs", "/redoc"}
)
"""Paths that answer whatever the dependencies do: an operator needs them most in an outage."""

# SQLSTATE classes that say the server cannot be reached or is going away: 08 (connection
# exception), 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now).
_CONNECTION_SQLSTATES: Final = ("08", "57P01", "57P02", "57P03")

Check = Callable[[], Awaitable[bool]]
"""Whether one dependency answers now (it must give up by itself within a few seconds)."""


def outage_problem(dependency: str) -> Problem:
    """The 503 answered while `dependency` ("database", "kafka") cannot be reached."""
    return Problem(
        f"The service's {dependency} cannot be reached; try again shortly.",
        status=503,
        title=f"{dependency.capitalize()} unavailable",
        slug=f"{dependency}-unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        extensions={"dependency": dependency},
    )


def database_outage(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached (as opposed to refusing a statement,
    which is a bug or a conflict and stays a 500 or the service's own answer).

    The error is SQLAlchemy's wrapping of the driver's, or the driver's own: the toolkit's
    statements on every event (outbox rows, event streams, consumers' positions) go to psycopg
    directly (`database.driver_connection`)."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return _unreachable(error.orig)
        return False
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return _unreachable(error)
    return False


def _unreachable(error: BaseException | None) -> bool:
    sqlstate = getattr(error, "sqlstate", None)
    # No SQLSTATE at all: the driver never got an answer from a server.
    return sqlstate is None or sqlstate.startswith(_CONNECTION_SQLSTATES)


class Availability:
    """The dependencies' state as last checked, kept fresh by `watch`."""

    def __init__(self, checks: Mapping[str, Check], interval: float = 1.0) -> None:
        self._checks = dict(checks)
        self.interval = interval
        self.unavailable: tuple[str, ...] = ()

    async def check_now(self) -> dict[str, bool]:
        """Run every check now; remember and return which dependencies answer."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._safely(self._checks[n]) for n in names))
        state = dict(zip(names, results, strict=True))
        unavailable = tuple(name for name, ok in state.items() if not ok)
        if unavailable != self.unavailable:
            if unavailable:
                logger.warning("dependency unavailable", extra={"dependencies": unavailable})
            else:
                logger.info("dependencies available again")
        self.unavailable = unavailable
        return state

    async def watch(self, stop: asyncio.Event) -> None:
        """Check every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            await self.check_now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    @staticmethod
    async def _safely(check: Check) -> bool:
        try:
            return await check()
        except Exception:
            return False


class RefuseWhileUnavailable:
    """ASGI middleware: while a dependency is unavailable, answer 503 naming it (the first
    unavailable one) to every request but the operational paths."""

    def __init__(self, app: ASGIApp, availability: Availability) -> None:
        self.app = app
        self.availability = availability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        unavailable = self.availability.unavailable
        if scope["type"] == "http" and unavailable and scope["path"] not in OPERATIONAL_PATHS:
            await problem_response(outage_problem(unavailable[0]))(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _on_database_error(request: Request, exc: Exception) -> Response:
    if database_outage(exc):
        return problem_response(outage_problem("database"))
    log_unexpected_error(exc)
    return internal_error()


def install_outage_handlers(app: FastAPI) -> None:
    """Answer the database driver's connection errors with the database's 503 (and any other
    database error with the generic 500, as before), whether SQLAlchemy wrapped them or not."""
    app.add_exception_handler(sa_exc.DBAPIError, _on_database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _on_database_error)
    app.add_exception_handler(psycopg.Error, _on_database_error)
