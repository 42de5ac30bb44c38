"""Sessions: sign-in, refresh-token families, sign-out and the revocation check.

A session is one sign-in: one family of refresh tokens, each spent by the refresh that replaces
it, and the access tokens issued from them. Presenting a spent refresh token again means it was
stolen (or the pair was): the whole family is revoked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from uuid import UUID

from confide_toolkit.auth import Caller, Role, sign_access_token
from confide_toolkit.ids import uuid7
from confide_toolkit.keyring import Erased
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity import domain
from confide_identity.domain import InvalidRefreshToken, InvalidTotpCode, SignInLocked, TotpRequired
from confide_identity.handlers import Dependencies, revocation, throttling
from confide_identity.handlers.accounts import email_index, rehash_password
from confide_identity.handlers.totp import matching_step
from confide_identity.store import AccountRecord, PresentedRefreshToken, SessionLifetime
from confide_identity.tokens import (
    SigningKey,
    access_token_id,
    new_refresh_token,
    refresh_token_digest,
    session_of,
)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


# --- the decisions -----------------------------------------------------------------------------


class RefreshVerdict(Enum):
    """What a presented refresh token allows."""

    UNKNOWN = "unknown"
    """No such token: refused."""
    REUSED = "reused"
    """Spent already: refused, and its whole family revoked."""
    ENDED = "ended"
    """Its session was revoked or expired, or its account is no longer active: refused."""
    USABLE = "usable"
    """Spent now for a new pair of the same session."""


def refresh_verdict(token: PresentedRefreshToken | None, now: datetime) -> RefreshVerdict:
    """Judge a presented refresh token at `now`."""
    if token is None:
        return RefreshVerdict.UNKNOWN
    if token.spent_at is not None:
        return RefreshVerdict.REUSED
    if token.revoked_at is not None or token.expires_at <= now or token.account_status != "active":
        return RefreshVerdict.ENDED
    return RefreshVerdict.USABLE


def session_ended(lifetime: SessionLifetime | None, now: datetime) -> bool:
    """Whether a session is over at `now` (revoked, expired, or never was)."""
    return lifetime is None or lifetime.revoked_at is not None or lifetime.expires_at <= now


# --- sign-in -----------------------------------------------------------------------------------


async def sign_in(
    deps: Dependencies,
    email: str,
    password: str,
    totp_code: str | None,
    client_address: str | None,
) -> TokenPair:
    """Check the credentials and open a session. An unknown email, a wrong password and an
    unusable account get the same answer after the same work (one Argon2id verification)."""
    now = deps.clock.now()
    address_key = await throttling.address_key(deps, client_address)
    try:
        normalised = domain.normalise_email(email)
    except domain.InvalidEmail:
        normalised = email.strip().lower()
    index = await email_index(deps, normalised)
    email_key = throttling.email_key(index)

    async with deps.engine.connect() as conn:
        await throttling.refuse_if_locked(deps, conn, email_key, address_key, now)
        account = await deps.accounts.by_email_index(conn, index)

    encoded = _password_hash(deps, account)
    if account is None or encoded is None:
        await deps.hasher.verify_nothing(password)
        raise await throttling.sign_in_failed(deps, email_key, address_key, None)
    if not await deps.hasher.verify(password, encoded):
        raise await throttling.sign_in_failed(deps, email_key, address_key, account.account_id)

    if account.totp_secret is not None:
        await _check_second_factor(
            deps, account, account.totp_secret, totp_code, now, email_key, address_key
        )

    if deps.hasher.needs_rehash(encoded):
        await rehash_password(deps, account.account_id, password)
    # The key first: waiting for it must not hold a pooled connection (at a cold start every
    # waiting sign-in would hold two and exhaust the pool).
    key = await deps.signing_keys.current()
    async with deps.engine.begin() as conn:
        await deps.sign_in_failures.forget(conn, email_key)
        return await _open_session(deps, conn, key, account.account_id, account.role, auth_time=now)


def _password_hash(deps: Dependencies, account: AccountRecord | None) -> str | None:
    """The account's password hash, if it may sign in at all."""
    if account is None or account.status != "active":
        return None
    opened = deps.sealing.open(account, "password", account.password_hash)
    return None if isinstance(opened, Erased) else opened.decode("ascii")


async def _check_second_factor(
    deps: Dependencies,
    account: AccountRecord,
    sealed_secret: bytes,
    code: str | None,
    now: datetime,
    email_key: str,
    address_key: str | None,
) -> None:
    if not code:
        raise TotpRequired()
    secret = deps.sealing.open(account, "totp", sealed_secret)
    step = None if isinstance(secret, Erased) else matching_step(secret, code, now)
    accepted = False
    if step is not None:
        async with deps.engine.begin() as conn:
            accepted = await deps.totp_steps.accept(conn, account.account_id, step)
    if not accepted:
        failure = await throttling.sign_in_failed(deps, email_key, address_key, account.account_id)
        raise failure if isinstance(failure, SignInLocked) else InvalidTotpCode()


async def _open_session(
    deps: Dependencies,
    conn: AsyncConnection,
    key: SigningKey,
    account_id: UUID,
    role: Role,
    auth_time: datetime,
) -> TokenPair:
    now = deps.clock.now()
    session_id = uuid7()
    await deps.sessions.open(
        conn, session_id, account_id, auth_time, now, expires_at=now + deps.session_ttl
    )
    return await _issue(deps, conn, key, session_id, account_id, role, auth_time)


async def _issue(
    deps: Dependencies,
    conn: AsyncConnection,
    key: SigningKey,
    session_id: UUID,
    account_id: UUID,
    role: Role,
    auth_time: datetime,
) -> TokenPair:
    refresh_token = new_refresh_token()
    await deps.sessions.add_refresh_token(
        conn, refresh_token_digest(refresh_token), session_id, deps.clock.now()
    )
    access_token = sign_access_token(
        key.private_key,
        key.kid,
        account_id,
        role,
        deps.access_token_ttl,
        deps.clock,
        auth_time,
        token_id=access_token_id(session_id),
        session_id=session_id,
    )
    return TokenPair(access_token, refresh_token, int(deps.access_token_ttl.total_seconds()))


# --- refresh, sign-out, revocation -------------------------------------------------------------


async def refresh_session(deps: Dependencies, refresh_token: str) -> TokenPair:
    """Exchange a refresh token for a new pair; the old one is spent. Presenting a spent
    token again revokes the whole session."""
    now = deps.clock.now()
    digest = refresh_token_digest(refresh_token)
    async with deps.engine.begin() as conn:
        token = await deps.sessions.presented(conn, digest)
        verdict = refresh_verdict(token, now)
        if verdict is RefreshVerdict.REUSED and token is not None:
            revoked = await revocation.end_session(
                deps, conn, token.account_id, token.session_id, now, "refresh_token_reused"
            )
            if revoked is not None:
                await deps.outbox.put(conn, revoked)
    if verdict is not RefreshVerdict.USABLE or token is None:
        raise InvalidRefreshToken()
    key = await deps.signing_keys.current()  # before the transaction: see sign_in
    async with deps.engine.begin() as conn:
        if not await deps.sessions.spend(conn, digest, now):
            raise InvalidRefreshToken()
        return await _issue(
            deps, conn, key, token.session_id, token.account_id, token.role, token.auth_time
        )


async def sign_out(deps: Dependencies, caller: Caller) -> None:
    """End the caller's session: its refresh token and access tokens stop working, here at
    once and in every other service once it has read the `SessionsRevoked` announcement."""
    session_id = caller.session_id or session_of(caller.token_id)
    if session_id is None:
        return
    async with deps.engine.begin() as conn:
        revoked = await revocation.end_session(
            deps, conn, caller.subject_id, session_id, deps.clock.now(), "signed_out"
        )
        if revoked is not None:
            await deps.outbox.put(conn, revoked)


async def is_token_revoked(deps: Dependencies, token_id: str) -> bool:
    """Whether an access token's session has ended (signed out, refresh-token reuse, password
    change, account closed or erased)."""
    session_id = session_of(token_id)
    if session_id is None:
        return True
    async with deps.engine.connect() as conn:
        lifetime = await deps.sessions.lifetime(conn, session_id)
    return session_ended(lifetime, deps.clock.now())
