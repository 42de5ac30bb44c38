"""Identity's service layer: one function per command or consumed event.

Each takes the `Dependencies` it works with (engine, keyring, outbox, clock, ...) and the
command's data; the HTTP routes and the consumers only parse, call one of these, and answer.
Errors are exceptions; those with an HTTP shape of their own (a 422 naming fields, a 423 with
Retry-After) are problem types, the rest are mapped once in `app.py`."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from confide_events import identity as contract
from confide_events.retention import RetentionExpired
from confide_toolkit.auth import Caller, Role, sign_access_token
from confide_toolkit.clock import Clock
from confide_toolkit.event_store import ConcurrencyConflict, EventStore
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.keyring import ERASED, Erased, Keyring, WrappedDataKey
from confide_toolkit.outbox import Outbox
from confide_toolkit.problem import (
    Conflict,
    FieldError,
    Locked,
    TooManyRequests,
    Unauthorized,
    UnprocessableContent,
)
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_identity import domain, store
from confide_identity.passwords import PasswordHasher, check_password
from confide_identity.tokens import (
    ServiceSecrets,
    SigningKey,
    SigningKeys,
    access_token_id,
    b32_secret,
    keyed_hash,
    new_refresh_token,
    refresh_token_digest,
    session_of,
)

_TOTP_DIGITS = 6
_TOTP_STEP_SECONDS = 30
_TOTP_SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1
_TOTP_ISSUER = "Confide"
_COMMAND_ATTEMPTS = 3


# --- errors -------------------------------------------------------------------------------------


class InvalidCredentials(Unauthorized):
    """The one answer for an unknown email, a wrong password and an unusable account."""

    slug = "invalid-credentials"
    title = "Invalid credentials"

    def __init__(self) -> None:
        super().__init__("The email or password is incorrect.")


class TotpRequired(Unauthorized):
    slug = "totp-required"
    title = "Second factor required"

    def __init__(self) -> None:
        super().__init__("This account needs a code from its authenticator app (totp_code).")


class InvalidTotpCode(Unauthorized):
    slug = "invalid-totp-code"
    title = "Invalid second factor"

    def __init__(self) -> None:
        super().__init__("The authenticator code is incorrect or was already used.")


class InvalidRefreshToken(Unauthorized):
    slug = "invalid-refresh-token"
    title = "Invalid refresh token"

    def __init__(self) -> None:
        super().__init__("The refresh token is invalid, expired or already used.")


class AccountLockedOut(Locked):
    slug = "sign-in-locked"
    title = "Sign-in locked"

    def __init__(self, retry_after: timedelta) -> None:
        super().__init__("Too many failed sign-ins; try again later.", retry_after=retry_after)


class TooManyAttempts(TooManyRequests):
    slug = "too-many-sign-in-attempts"
    title = "Too many sign-in attempts"

    def __init__(self, retry_after: timedelta) -> None:
        super().__init__(
            "Too many failed sign-ins from this address; try again later.",
            retry_after=retry_after,
        )


class EmailAlreadyRegistered(Conflict):
    slug = "email-already-registered"
    title = "Email already registered"

    def __init__(self) -> None:
        super().__init__("This email cannot be used for a new account.")


class CommandConflict(Conflict):
    slug = "concurrent-change"
    title = "Concurrent change"

    def __init__(self) -> None:
        super().__init__("The account changed at the same time; try again.")


def _refused(field: str, violations: list[domain.PolicyViolation]) -> UnprocessableContent:
    return UnprocessableContent(
        "The password does not meet the password policy.",
        slug="password-refused",
        title="Password refused",
        errors=[FieldError(field=field, message=v.message, type=v.kind) for v in violations],
    )


def invalid_field(field: str, message: str, kind: str) -> UnprocessableContent:
    """A 422 naming one field, in the same shape as validation errors."""
    return UnprocessableContent(
        "The request has invalid fields.",
        slug="validation-error",
        title="Validation error",
        errors=[FieldError(field=field, message=message, type=kind)],
    )


# --- wiring ------------------------------------------------------------------------------------


@dataclass
class Dependencies:
    """What the handlers work with; built once in `app.py`."""

    engine: AsyncEngine
    keyring: Keyring
    outbox: Outbox
    clock: Clock
    events: EventStore
    hasher: PasswordHasher
    secrets: ServiceSecrets
    signing_keys: SigningKeys
    access_token_ttl: timedelta
    session_ttl: timedelta
    account_failure_limit: int
    address_failure_limit: int
    failure_window: timedelta
    lockout: timedelta


def event_store(clock: Clock) -> EventStore:
    """The account event store with its read-model projection."""
    return EventStore(domain.ACCOUNT_EVENTS, clock, projections=[store.project_account])


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class Profile:
    """A decrypted profile; every field is `ERASED` once the profile key is shredded."""

    email: str | Erased
    display_name: str | Erased
    phone: str | Erased | None
    address: str | Erased | None


@dataclass(frozen=True)
class AccountView:
    user_id: UUID
    role: Role
    status: domain.AccountStatus
    profile: Profile
    mfa_enabled: bool
    password_age_days: int


# --- sealing personal data under the profile key -----------------------------------------------


def _record(account_id: UUID, part: str) -> str:
    return f"account:{account_id}:{part}"


async def _seal(
    deps: Dependencies, conn: AsyncConnection, account_id: UUID, part: str, plaintext: bytes
) -> domain.Sealed:
    ciphertext = await deps.keyring.encrypt(
        conn, account_id, domain.PROFILE_CATEGORY, _record(account_id, part), plaintext
    )
    return store.seal(ciphertext)


def _open(deps: Dependencies, row: Row[Any], part: str, ciphertext: bytes) -> bytes | Erased:
    """Decrypt one column of an account row read with its data key joined on."""
    return deps.keyring.open(
        WrappedDataKey.from_row(row),
        row.account_id,
        domain.PROFILE_CATEGORY,
        _record(row.account_id, part),
        bytes(ciphertext),
    )


def _profile_json(email: str, display_name: str, phone: str | None, address: str | None) -> bytes:
    return json.dumps(
        {"email": email, "display_name": display_name, "phone": phone, "address": address}
    ).encode("utf-8")


def _profile_of(deps: Dependencies, row: Row[Any]) -> Profile:
    opened = _open(deps, row, "profile", row.profile)
    if isinstance(opened, Erased):
        return Profile(ERASED, ERASED, ERASED, ERASED)
    fields = json.loads(opened)
    return Profile(fields["email"], fields["display_name"], fields["phone"], fields["address"])


async def _email_index(deps: Dependencies, email: str) -> str:
    return keyed_hash(await deps.secrets.get(ServiceSecrets.BLIND_INDEX), "email", email)


# --- registration ----------------------------------------------------------------------------


async def register_account(
    deps: Dependencies, email: str, password: str, display_name: str, role: Role
) -> UUID:
    """Open an account; emits UserRegistered (id and role only). Refuses a weak password
    (422) and a used email (409) before writing anything."""
    try:
        normalised = domain.normalise_email(email)
    except domain.InvalidEmail:
        raise invalid_field("email", "Not a valid email address.", "email_invalid") from None
    violations = check_password(password, normalised)
    if violations:
        raise _refused("password", violations)
    email_index = await _email_index(deps, normalised)
    async with deps.engine.connect() as conn:
        if await store.email_index_taken(conn, email_index):
            raise EmailAlreadyRegistered()
    password_hash = await deps.hasher.hash(password)
    account_id = uuid7()
    now = deps.clock.now()
    try:
        async with deps.engine.begin() as conn:
            profile = await _seal(
                deps,
                conn,
                account_id,
                "profile",
                _profile_json(normalised, display_name, None, None),
            )
            sealed_hash = await _seal(
                deps, conn, account_id, "password", password_hash.encode("ascii")
            )
            events = domain.register(account_id, role, email_index, profile, sealed_hash, now)
            await deps.events.append(conn, account_id, 0, events)
            await deps.outbox.put(
                conn, contract.UserRegistered(subject_id=account_id, role=role, registered_at=now)
            )
    except Exception as error:
        # Two registrations of one email at the same moment: the unique index settles it.
        if "uq_accounts_email_index" in str(getattr(error, "orig", "")):
            raise EmailAlreadyRegistered() from None
        raise
    return account_id


# --- throttling ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FailureOutcome:
    locked_until: datetime | None
    lock_started: bool


async def _lock_of(conn: AsyncConnection, key: str, now: datetime) -> datetime | None:
    locked_until = await conn.scalar(
        select(store.sign_in_failures.c.locked_until).where(
            store.sign_in_failures.c.throttle_key == key
        )
    )
    return locked_until if locked_until is not None and locked_until > now else None


async def _record_failure(
    deps: Dependencies, conn: AsyncConnection, key: str, limit: int, now: datetime
) -> _FailureOutcome:
    table = store.sign_in_failures
    await conn.execute(
        insert(table)
        .values(throttle_key=key, failures=0, window_started_at=now)
        .on_conflict_do_nothing(index_elements=[table.c.throttle_key])
    )
    row = (
        await conn.execute(select(table).where(table.c.throttle_key == key).with_for_update())
    ).one()
    window_over = row.window_started_at + deps.failure_window <= now
    lock_over = row.locked_until is not None and row.locked_until <= now
    if window_over or lock_over:
        failures, started, locked_until = 1, now, None
    else:
        failures, started, locked_until = row.failures + 1, row.window_started_at, row.locked_until
    lock_started = False
    if failures >= limit and locked_until is None:
        locked_until, lock_started = now + deps.lockout, True
    await conn.execute(
        update(table)
        .where(table.c.throttle_key == key)
        .values(failures=failures, window_started_at=started, locked_until=locked_until)
    )
    return _FailureOutcome(locked_until, lock_started)


async def _forget_stale_failures(deps: Dependencies, conn: AsyncConnection, now: datetime) -> None:
    # Hashes of emails nobody registered stay no longer than a window or a lock.
    table = store.sign_in_failures
    await conn.execute(
        delete(table).where(
            table.c.window_started_at < now - deps.failure_window,
            (table.c.locked_until.is_(None)) | (table.c.locked_until < now),
        )
    )


async def _sign_in_failed(
    deps: Dependencies,
    email_key: str,
    address_key: str | None,
    account_id: UUID | None,
) -> Exception:
    """Count a failed sign-in against the email and the client address (in its own
    transaction: it must stick although the request fails) and say how to answer it."""
    now = deps.clock.now()
    async with deps.engine.begin() as conn:
        await _forget_stale_failures(deps, conn, now)
        by_email = await _record_failure(deps, conn, email_key, deps.account_failure_limit, now)
        if address_key is not None:
            await _record_failure(deps, conn, address_key, deps.address_failure_limit, now)
        if by_email.lock_started and by_email.locked_until is not None and account_id is not None:
            await deps.outbox.put(
                conn,
                contract.AccountLocked(
                    subject_id=account_id, locked_at=now, locked_until=by_email.locked_until
                ),
            )
    if by_email.lock_started and by_email.locked_until is not None:
        return AccountLockedOut(by_email.locked_until - now)
    return InvalidCredentials()


# --- sign-in, refresh, sign-out --------------------------------------------------------------


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, _TOTP_DIGITS, SHA1(), _TOTP_STEP_SECONDS)  # noqa: S303 (RFC 6238 default)


def _matching_step(secret: bytes, code: str, now: datetime) -> int | None:
    """The time step whose code matches (allowing one step of clock drift either way)."""
    totp = _totp(secret)
    current = int(now.timestamp()) // _TOTP_STEP_SECONDS
    for step in (current, current - 1, current + 1):
        expected = totp.generate(step * _TOTP_STEP_SECONDS)
        if hmac.compare_digest(expected, code.encode("ascii", "replace")):
            return step
    return None


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
    address_key = None
    if client_address:
        secret = await deps.secrets.get(ServiceSecrets.ADDRESS_HASH)
        address_key = "address:" + keyed_hash(secret, "address", client_address)
    try:
        normalised = domain.normalise_email(email)
    except domain.InvalidEmail:
        normalised = email.strip().lower()
    email_index = await _email_index(deps, normalised)
    email_key = "email:" + email_index

    async with deps.engine.connect() as conn:
        if address_key is not None:
            address_locked = await _lock_of(conn, address_key, now)
            if address_locked is not None:
                raise TooManyAttempts(address_locked - now)
        # Locks are keyed by the email, not the account, so that an unknown email locks too
        # and a 423 tells nothing about whether an account exists.
        email_locked = await _lock_of(conn, email_key, now)
        if email_locked is not None:
            raise AccountLockedOut(email_locked - now)
        row = await store.account_by_email_index(conn, email_index)

    encoded: str | None = None
    if row is not None and row.status == "active":
        opened = _open(deps, row, "password", row.password_hash)
        if not isinstance(opened, Erased):
            encoded = opened.decode("ascii")
    if encoded is None:
        await deps.hasher.verify_nothing(password)
        raise await _sign_in_failed(deps, email_key, address_key, None)
    assert row is not None
    if not await deps.hasher.verify(password, encoded):
        raise await _sign_in_failed(deps, email_key, address_key, row.account_id)

    if row.totp_secret is not None:
        if not totp_code:
            raise TotpRequired()
        secret_opened = _open(deps, row, "totp", row.totp_secret)
        step = (
            None
            if isinstance(secret_opened, Erased)
            else _matching_step(secret_opened, totp_code, now)
        )
        accepted = False
        if step is not None:
            async with deps.engine.begin() as conn:
                accepted = await store.accept_totp_step(conn, row.account_id, step)
        if not accepted:
            failure = await _sign_in_failed(deps, email_key, address_key, row.account_id)
            raise failure if isinstance(failure, AccountLockedOut) else InvalidTotpCode()

    if deps.hasher.needs_rehash(encoded):
        await _rehash(deps, row.account_id, password)
    # The key first: waiting for it must not hold a pooled connection (at a cold start every
    # waiting sign-in would hold two and exhaust the pool).
    key = await deps.signing_keys.current()
    async with deps.engine.begin() as conn:
        await conn.execute(
            delete(store.sign_in_failures).where(store.sign_in_failures.c.throttle_key == email_key)
        )
        return await _open_session(deps, conn, key, row.account_id, row.role, auth_time=now)


async def _rehash(deps: Dependencies, account_id: UUID, password: str) -> None:
    stronger = await deps.hasher.hash(password)
    try:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            sealed = await _seal(deps, conn, account_id, "password", stronger.encode("ascii"))
            await deps.events.append(
                conn, account_id, account.version, account.rehash_password(sealed)
            )
    except (ConcurrencyConflict, domain.AccountError):
        # The account changed meanwhile; the next sign-in rehashes.
        return


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
    await conn.execute(
        store.sessions.insert().values(
            session_id=session_id,
            account_id=account_id,
            auth_time=auth_time,
            created_at=now,
            expires_at=now + deps.session_ttl,
        )
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
    await conn.execute(
        store.refresh_tokens.insert().values(
            token_hash=refresh_token_digest(refresh_token),
            session_id=session_id,
            issued_at=deps.clock.now(),
        )
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
    )
    return TokenPair(access_token, refresh_token, int(deps.access_token_ttl.total_seconds()))


async def refresh_session(deps: Dependencies, refresh_token: str) -> TokenPair:
    """Exchange a refresh token for a new pair; the old one is spent. Presenting a spent
    token again means it was stolen (or the pair was): the whole session is revoked."""
    now = deps.clock.now()
    digest = refresh_token_digest(refresh_token)
    tokens, sessions, accounts = store.refresh_tokens, store.sessions, store.accounts
    async with deps.engine.begin() as conn:
        row = (
            await conn.execute(
                select(
                    tokens.c.spent_at,
                    sessions.c.session_id,
                    sessions.c.account_id,
                    sessions.c.auth_time,
                    sessions.c.expires_at,
                    sessions.c.revoked_at,
                    accounts.c.role,
                    accounts.c.status,
                )
                .join(sessions, sessions.c.session_id == tokens.c.session_id)
                .join(accounts, accounts.c.account_id == sessions.c.account_id)
                .where(tokens.c.token_hash == digest)
                .with_for_update(of=tokens)
            )
        ).first()
        if row is None:
            raise InvalidRefreshToken()
        if row.spent_at is not None:
            await conn.execute(
                update(sessions)
                .where(sessions.c.session_id == row.session_id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_because="refresh-token-reuse")
            )
    if row.spent_at is not None:
        raise InvalidRefreshToken()
    if row.revoked_at is not None or row.expires_at <= now or row.status != "active":
        raise InvalidRefreshToken()
    key = await deps.signing_keys.current()  # before the transaction: see sign_in
    async with deps.engine.begin() as conn:
        spent = await conn.execute(
            update(tokens)
            .where(tokens.c.token_hash == digest, tokens.c.spent_at.is_(None))
            .values(spent_at=now)
        )
        if not spent.rowcount:
            raise InvalidRefreshToken()
        return await _issue(
            deps, conn, key, row.session_id, row.account_id, row.role, row.auth_time
        )


async def sign_out(deps: Dependencies, caller: Caller) -> None:
    """End the caller's session: its refresh token and access tokens stop working."""
    session_id = session_of(caller.token_id)
    async with deps.engine.begin() as conn:
        await conn.execute(
            update(store.sessions)
            .where(store.sessions.c.session_id == session_id, store.sessions.c.revoked_at.is_(None))
            .values(revoked_at=deps.clock.now(), revoked_because="signed-out")
        )


async def is_token_revoked(deps: Dependencies, token_id: str) -> bool:
    """Whether an access token's session has ended (signed out, refresh-token reuse, password
    change, account closed or erased)."""
    session_id = session_of(token_id)
    if session_id is None:
        return True
    async with deps.engine.connect() as conn:
        row = (
            await conn.execute(
                select(store.sessions.c.revoked_at, store.sessions.c.expires_at).where(
                    store.sessions.c.session_id == session_id
                )
            )
        ).first()
    return row is None or row.revoked_at is not None or row.expires_at <= deps.clock.now()


# --- the signed-in person's account ----------------------------------------------------------

T = TypeVar("T")


async def _load(deps: Dependencies, conn: AsyncConnection, account_id: UUID) -> domain.Account:
    recorded = await deps.events.load(conn, account_id)
    return domain.Account.from_events(r.event for r in recorded)


async def _retrying(command: Callable[[], Awaitable[T]]) -> T:
    """Run a command again when another writer appended to the stream meanwhile."""
    for _ in range(_COMMAND_ATTEMPTS - 1):
        try:
            return await command()
        except ConcurrencyConflict:
            continue
    try:
        return await command()
    except ConcurrencyConflict:
        raise CommandConflict() from None


async def _account_row(deps: Dependencies, conn: AsyncConnection, account_id: UUID) -> Row[Any]:
    row = await store.account_by_id(conn, account_id)
    if row is None:
        raise InvalidCredentials()
    return row


async def read_account(deps: Dependencies, account_id: UUID) -> AccountView:
    """The account with its profile decrypted (fields read as `ERASED` after shredding)."""
    async with deps.engine.connect() as conn:
        row = await _account_row(deps, conn, account_id)
    return AccountView(
        user_id=row.account_id,
        role=row.role,
        status=row.status,
        profile=_profile_of(deps, row),
        mfa_enabled=row.totp_secret is not None,
        password_age_days=max(0, (deps.clock.now() - row.password_changed_at).days),
    )


PROFILE_FIELDS = ("display_name", "phone", "address")


async def update_profile(
    deps: Dependencies, account_id: UUID, changes: Mapping[str, str | None]
) -> AccountView:
    """Change the given profile fields (`display_name`, `phone`, `address`; `None` clears
    phone or address); fields not given keep their value."""
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"not profile fields: {sorted(unknown)}")

    async def command() -> None:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            current = _profile_of(deps, await _account_row(deps, conn, account_id))
            if not isinstance(current.email, str) or not isinstance(current.display_name, str):
                raise domain.AccountNotActive()
            merged = {
                "display_name": current.display_name,
                "phone": current.phone,
                "address": current.address,
                **changes,
            }
            profile = _profile_json(
                current.email,
                merged["display_name"] or current.display_name,
                merged["phone"] if isinstance(merged["phone"], str) else None,
                merged["address"] if isinstance(merged["address"], str) else None,
            )
            sealed = await _seal(deps, conn, account_id, "profile", profile)
            events = account.update_profile(sealed, deps.clock.now())
            await deps.events.append(conn, account_id, account.version, events)

    await _retrying(command)
    return await read_account(deps, account_id)


async def change_password(
    deps: Dependencies, caller: Caller, current_password: str, new_password: str
) -> None:
    """Replace the password after checking the current one; emits PasswordChanged and ends
    every other session. A wrong current password counts as a failed sign-in."""
    account_id = caller.subject_id
    async with deps.engine.connect() as conn:
        row = await _account_row(deps, conn, account_id)
        email_key = f"email:{row.email_index}"
        locked = await _lock_of(conn, email_key, deps.clock.now())
    if locked is not None:
        raise AccountLockedOut(locked - deps.clock.now())
    opened = _open(deps, row, "password", row.password_hash)
    if isinstance(opened, Erased) or not await deps.hasher.verify(
        current_password, opened.decode("ascii")
    ):
        failure = await _sign_in_failed(deps, email_key, None, account_id)
        if isinstance(failure, AccountLockedOut):
            raise failure
        raise invalid_field(
            "current_password", "The current password is incorrect.", "password_incorrect"
        )
    profile = _profile_of(deps, row)
    email = None if isinstance(profile.email, Erased) else profile.email
    violations = check_password(new_password, email)
    if new_password == current_password:
        violations.append(
            domain.PolicyViolation("Choose a password you have not been using.", "password_reused")
        )
    if violations:
        raise _refused("new_password", violations)
    new_hash = await deps.hasher.hash(new_password)

    async def command() -> None:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            now = deps.clock.now()
            sealed = await _seal(deps, conn, account_id, "password", new_hash.encode("ascii"))
            await deps.events.append(
                conn, account_id, account.version, account.change_password(sealed, now)
            )
            await store.revoke_sessions(
                conn,
                account_id,
                now,
                "password-changed",
                except_session=session_of(caller.token_id),
            )
            await deps.outbox.put(
                conn, contract.PasswordChanged(subject_id=account_id, changed_at=now)
            )

    await _retrying(command)


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    otpauth_uri: str


async def start_totp_enrolment(deps: Dependencies, account_id: UUID) -> TotpEnrolment:
    """A new TOTP secret, stored encrypted and not enforced until confirmed with a code."""
    raw = _new_totp_secret()

    async def command() -> str | Erased:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            email = _profile_of(deps, await _account_row(deps, conn, account_id)).email
            sealed = await _seal(deps, conn, account_id, "totp", raw)
            events = account.start_totp_enrolment(sealed, deps.clock.now())
            await deps.events.append(conn, account_id, account.version, events)
            return email

    email = await _retrying(command)
    label = email if isinstance(email, str) else str(account_id)
    uri = _totp(raw).get_provisioning_uri(label, _TOTP_ISSUER)
    return TotpEnrolment(secret=b32_secret(raw), otpauth_uri=uri)


def _new_totp_secret() -> bytes:
    return secrets.token_bytes(_TOTP_SECRET_BYTES)


async def confirm_totp(deps: Dependencies, account_id: UUID, code: str) -> None:
    """Turn the second factor on once the person proves their app has the secret."""

    async def command() -> None:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            # Decided first: no enrolment, or one already enabled, is refused whatever the code.
            events = account.confirm_totp(deps.clock.now())
            row = await _account_row(deps, conn, account_id)
            secret = _open(deps, row, "totp", row.totp_pending)
            if isinstance(secret, Erased):
                raise domain.AccountNotActive()
            step = _matching_step(secret, code, deps.clock.now())
            if step is None or not await store.accept_totp_step(conn, account_id, step):
                raise invalid_field("code", "The code is incorrect or was already used.", "totp")
            await deps.events.append(conn, account_id, account.version, events)

    await _retrying(command)


async def close_account(deps: Dependencies, account_id: UUID) -> None:
    """Close the account: every session ends and AccountClosed starts the retention clocks."""

    async def command() -> None:
        async with deps.engine.begin() as conn:
            account = await _load(deps, conn, account_id)
            now = deps.clock.now()
            await deps.events.append(conn, account_id, account.version, account.close(now))
            await store.revoke_sessions(conn, account_id, now, "account-closed")
            await deps.outbox.put(
                conn, contract.AccountClosed(subject_id=account_id, closed_at=now)
            )

    await _retrying(command)


# --- consumed events ---------------------------------------------------------------------------


async def shred_profile(deps: Dependencies, event: RetentionExpired, ctx: EventContext) -> None:
    """RetentionExpired for identity.profile: destroy the person's profile key (profile,
    password hash and TOTP secret with it), end their sessions, and say so."""
    if event.category != domain.PROFILE_CATEGORY:
        return
    conn = ctx.conn
    tombstone = await deps.keyring.shred(conn, event.subject_id, domain.PROFILE_CATEGORY)
    if tombstone is None:
        # Identity never held data for this subject: there is no key to report.
        return
    recorded = await deps.events.load(conn, event.subject_id)
    if recorded:
        account = domain.Account.from_events(r.event for r in recorded)
        events = account.shred(tombstone.key_id, tombstone.shredded_at)
        await deps.events.append(conn, event.subject_id, account.version, events)
    await store.revoke_sessions(conn, event.subject_id, deps.clock.now(), "profile-erased")
    await ctx.emit(
        contract.SubjectDataShredded(
            subject_id=event.subject_id,
            category="identity.profile",
            key_id=tombstone.key_id,
            shredded_at=tombstone.shredded_at,
            erasure_case_id=event.erasure_case_id,
        )
    )
