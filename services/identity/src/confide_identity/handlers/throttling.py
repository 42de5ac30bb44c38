"""Sign-in throttling: failed sign-ins are counted per email (known or not) and per client
address within a window; reaching the limit locks that email or address for the lock-out time.

Locks are keyed by the email, not the account, so that an unknown email locks too and a 423
tells nothing about whether an account exists. Keys are keyed hashes, never the email or the
address itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from confide_events import identity as contract
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity.domain import (
    IdentityError,
    InvalidCredentials,
    SignInLocked,
    TooManySignInAttempts,
)
from confide_identity.handlers import Dependencies
from confide_identity.store import FailureCount
from confide_identity.tokens import ServiceSecrets, keyed_hash

# --- the decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureCounted:
    """A key's count after one more failure; `lock_started` when this very failure locked it."""

    count: FailureCount
    lock_started: bool


def count_failure(
    count: FailureCount, now: datetime, *, limit: int, window: timedelta, lockout: timedelta
) -> FailureCounted:
    """Count one more failed sign-in. A window that has run out, or a lock that is over, starts
    the count afresh; the failure that reaches `limit` locks the key until `now + lockout`
    (a failure while locked does not lengthen the lock)."""
    window_over = count.window_started_at + window <= now
    lock_over = count.locked_until is not None and count.locked_until <= now
    if window_over or lock_over:
        counted = FailureCount(1, now, None)
    else:
        counted = FailureCount(count.failures + 1, count.window_started_at, count.locked_until)
    if counted.failures >= limit and counted.locked_until is None:
        return FailureCounted(
            FailureCount(counted.failures, counted.window_started_at, now + lockout), True
        )
    return FailureCounted(counted, False)


def lock_in_force(locked_until: datetime | None, now: datetime) -> datetime | None:
    """When the lock ends, if it is still in force at `now`."""
    return locked_until if locked_until is not None and locked_until > now else None


# --- the keys ----------------------------------------------------------------------------------


def email_key(email_index: str) -> str:
    """The throttle key of an email, from its blind index."""
    return "email:" + email_index


async def address_key(deps: Dependencies, client_address: str | None) -> str | None:
    """The throttle key of a client address (None when the address is unknown)."""
    if not client_address:
        return None
    secret = await deps.secrets.get(ServiceSecrets.ADDRESS_HASH)
    return "address:" + keyed_hash(secret, "address", client_address)


# --- the handlers ------------------------------------------------------------------------------


async def refuse_if_locked(
    deps: Dependencies,
    conn: AsyncConnection,
    email: str,
    address: str | None,
    now: datetime,
) -> None:
    """Raise `TooManySignInAttempts` while the address is locked, `SignInLocked` while the
    email is."""
    if address is not None:
        address_locked = lock_in_force(await deps.sign_in_failures.locked_until(conn, address), now)
        if address_locked is not None:
            raise TooManySignInAttempts(address_locked - now)
    email_locked = lock_in_force(await deps.sign_in_failures.locked_until(conn, email), now)
    if email_locked is not None:
        raise SignInLocked(email_locked - now)


async def sign_in_failed(
    deps: Dependencies, email: str, address: str | None, account_id: UUID | None
) -> IdentityError:
    """Count a failed sign-in against the email and the client address, in a transaction of its
    own (it must stick although the request fails), and say how to answer it: `SignInLocked`
    when this failure locked the email, `InvalidCredentials` otherwise. Locking a real
    account's email emits AccountLocked."""
    now = deps.clock.now()
    async with deps.engine.begin() as conn:
        # Hashes of emails nobody registered stay no longer than a window or a lock.
        await deps.sign_in_failures.forget_stale(conn, now - deps.failure_window, now)
        by_email = await _count(deps, conn, email, deps.account_failure_limit, now)
        if address is not None:
            await _count(deps, conn, address, deps.address_failure_limit, now)
        locked_until = by_email.count.locked_until
        if by_email.lock_started and locked_until is not None and account_id is not None:
            await deps.outbox.put(
                conn,
                contract.AccountLocked(
                    subject_id=account_id, locked_at=now, locked_until=locked_until
                ),
            )
    if by_email.lock_started and locked_until is not None:
        return SignInLocked(locked_until - now)
    return InvalidCredentials()


async def _count(
    deps: Dependencies, conn: AsyncConnection, key: str, limit: int, now: datetime
) -> FailureCounted:
    counted = count_failure(
        await deps.sign_in_failures.count_for_update(conn, key, now),
        now,
        limit=limit,
        window=deps.failure_window,
        lockout=deps.lockout,
    )
    await deps.sign_in_failures.save(conn, key, counted.count)
    return counted
