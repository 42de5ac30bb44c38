"""What guards sign-ins: failures counted per keyed hash (email, client address), and the TOTP
steps already used."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import (
    delete,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity.store.tables import (
    sign_in_failures,
    totp_steps,
)

# --- sign-in failures ------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureCount:
    """Failed sign-ins counted under one throttle key (an email's or an address's keyed hash)
    since `window_started_at`, and the lock they led to, if any."""

    failures: int
    window_started_at: datetime
    locked_until: datetime | None


class SignInFailures:
    """The counts of failed sign-ins per throttle key."""

    async def locked_until(self, conn: AsyncConnection, key: str) -> datetime | None:
        """When the key's lock ends (None when it was never locked); it may be over already."""
        locked_until: datetime | None = await conn.scalar(
            select(sign_in_failures.c.locked_until).where(sign_in_failures.c.throttle_key == key)
        )
        return locked_until

    async def count_for_update(
        self, conn: AsyncConnection, key: str, now: datetime
    ) -> FailureCount:
        """The key's count (a fresh one from `now` on first failure), locked until the
        transaction ends so that concurrent failures are all counted."""
        await conn.execute(
            insert(sign_in_failures)
            .values(throttle_key=key, failures=0, window_started_at=now)
            .on_conflict_do_nothing(index_elements=[sign_in_failures.c.throttle_key])
        )
        row = (
            await conn.execute(
                select(sign_in_failures)
                .where(sign_in_failures.c.throttle_key == key)
                .with_for_update()
            )
        ).one()
        return FailureCount(row.failures, row.window_started_at, row.locked_until)

    async def save(self, conn: AsyncConnection, key: str, count: FailureCount) -> None:
        await conn.execute(
            update(sign_in_failures)
            .where(sign_in_failures.c.throttle_key == key)
            .values(
                failures=count.failures,
                window_started_at=count.window_started_at,
                locked_until=count.locked_until,
            )
        )

    async def forget(self, conn: AsyncConnection, key: str) -> None:
        """Drop the key's count (after a successful sign-in)."""
        await conn.execute(delete(sign_in_failures).where(sign_in_failures.c.throttle_key == key))

    async def forget_stale(
        self, conn: AsyncConnection, window_ended_before: datetime, now: datetime
    ) -> None:
        """Drop the counts whose window ended and whose lock (if any) is over."""
        await conn.execute(
            delete(sign_in_failures).where(
                sign_in_failures.c.window_started_at < window_ended_before,
                (sign_in_failures.c.locked_until.is_(None))
                | (sign_in_failures.c.locked_until < now),
            )
        )


# --- TOTP steps --------------------------------------------------------------------------------


class TotpSteps:
    """The last accepted TOTP time step per account."""

    async def accept(self, conn: AsyncConnection, account_id: UUID, step: int) -> bool:
        """Record `step` as used; False when it (or a later one) was used already (a replay)."""
        proposed = insert(totp_steps).values(account_id=account_id, last_step=step)
        statement = proposed.on_conflict_do_update(
            index_elements=[totp_steps.c.account_id],
            set_={"last_step": proposed.excluded.last_step},
            where=totp_steps.c.last_step < proposed.excluded.last_step,
        ).returning(totp_steps.c.account_id)
        row = (await conn.execute(statement)).first()
        return row is not None
