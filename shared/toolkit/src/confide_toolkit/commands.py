"""Running a command: one transaction, run again from the start when another writer changed the
same aggregate meanwhile. The one retry policy of every service's handlers.

A handler gives the work as a function of the connection; the work loads the aggregate through
its repository, lets the domain decide, saves the aggregate's new events and puts the
integration events in the outbox, all in that transaction. When the event store refuses the
append (`ConcurrencyConflict`), nothing was written and the work runs again on fresh state; after
`COMMAND_ATTEMPTS` refusals the command gives up with `ConcurrentChange`, which every service
answers as 409 `concurrent-change`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.event_store import ConcurrencyConflict

T = TypeVar("T")

COMMAND_ATTEMPTS: Final = 5
"""How many times a command is tried before it gives up: writers on one aggregate are rare and
brief, so a fifth collision in a row means the aggregate is under a storm of changes."""


class ConcurrentChange(Exception):
    """The aggregate kept changing under the command; the caller may simply try again."""

    def __init__(self) -> None:
        super().__init__("The record changed at the same time; try again.")


async def run_command(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = COMMAND_ATTEMPTS,
) -> T:
    """Run `work` in a transaction of its own and commit; run it again from the start (on a
    new transaction) when the event store refused its append. Raises `ConcurrentChange` after
    `attempts` refusals; any other exception rolls back and propagates at once."""
    for _ in range(attempts):
        try:
            async with engine.begin() as conn:
                return await work(conn)
        except ConcurrencyConflict:
            continue
    raise ConcurrentChange()
