"""The scheduler: emits `RetentionExpired` for every (person, category) whose time has come.

Each pass claims due rows of `expiries` with `SELECT ... FOR UPDATE SKIP LOCKED` and, in the
same transaction, puts each expiry in the outbox, marks the row emitted (with the time of its
retry, should no owner answer) and records the emission in its erasure case. So with several
replicas running, a row is emitted by one of them only (the others skip the locked row, and
find it emitted once the lock is released), and what the outbox holds is published exactly
once in effect. Nothing is kept in memory: a replica that was down finds, when it is back,
every row that fell due meanwhile (they are still unemitted), and emits them.

A row is not claimed while a legal hold stands for its person, nor while its case is paused;
releasing the hold (or resuming) makes the overdue rows claimable on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from confide_events.retention import RetentionExpired
from confide_toolkit.clock import Clock
from confide_toolkit.commands import run_command
from confide_toolkit.outbox import Outbox
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_retention import store
from confide_retention.store import ErasureCases

logger = logging.getLogger(__name__)


class Scheduler:
    """Emits due expiries; `run` passes every `interval` seconds (or at once when woken)."""

    def __init__(
        self,
        engine: AsyncEngine,
        cases: ErasureCases,
        outbox: Outbox,
        clock: Clock,
        *,
        answer_timeout: timedelta,
        batch_size: int = 100,
        interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self._cases = cases
        self._outbox = outbox
        self._clock = clock
        self._answer_timeout = answer_timeout
        self._batch_size = batch_size
        self._interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def emit_due(self) -> int:
        """One pass: emit up to a batch of due expiries; returns how many were emitted."""

        async def work(conn: AsyncConnection) -> int:
            now = self._clock.now()
            due = await store.claim_due(conn, now, self._batch_size)
            for expiry in due:
                await self._outbox.put(
                    conn,
                    RetentionExpired(
                        subject_id=expiry.subject_id,
                        category=expiry.category,
                        policy=expiry.policy,
                        due_at=expiry.due_at,
                        erasure_case_id=expiry.erasure_case_id,
                    ),
                )
                await store.mark_emitted(conn, expiry, now, now + self._answer_timeout)
                if expiry.erasure_case_id is not None:
                    case = await self._cases.load_for_change(conn, expiry.erasure_case_id)
                    if case is not None:
                        case.record_emission(expiry.category, now)
                        await self._cases.save(conn, case)
            return len(due)

        return await run_command(self._engine, work)

    async def emit_all_due(self) -> int:
        """Passes until nothing due is left (catching up after downtime); returns the total."""
        total = 0
        while True:
            emitted = await self.emit_due()
            total += emitted
            if emitted < self._batch_size:
                return total

    def wake(self) -> None:
        """Run a pass now (a hold was released, a case resumed or opened)."""
        self._wake.set()

    async def run(self) -> None:
        """Pass every `interval` seconds until `stop`; a failed pass (database outage) is
        logged and tried again on the next."""
        while not self._stopping.is_set():
            # Cleared before the pass, not after: a wake-up from a request that commits during
            # the pass then runs another pass at once instead of waiting a whole interval.
            self._wake.clear()
            try:
                await self.emit_all_due()
            except Exception:
                logger.exception("retention scheduler pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name="retention-scheduler")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
