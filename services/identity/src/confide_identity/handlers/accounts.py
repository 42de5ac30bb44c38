"""The account's life: registration, reading it, profile changes, the password change, closing,
and shredding the profile when retention's verdict comes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from confide_events import identity as contract
from confide_events.retention import RetentionExpired
from confide_toolkit.auth import Caller, Role
from confide_toolkit.commands import run_command
from confide_toolkit.event_store import ConcurrencyConflict
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.keyring import Erased
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity import domain
from confide_identity.domain import (
    Account,
    AccountNotActive,
    EmailAlreadyRegistered,
    InvalidCredentials,
    InvalidField,
    PasswordRefused,
    PolicyViolation,
    SignInLocked,
)
from confide_identity.handlers import Dependencies, revocation, throttling
from confide_identity.handlers.sealing import Profile, profile_document
from confide_identity.passwords import check_password
from confide_identity.store import AccountRecord
from confide_identity.tokens import ServiceSecrets, keyed_hash, session_of

PROFILE_FIELDS = ("display_name", "phone", "address")


@dataclass(frozen=True)
class AccountView:
    user_id: UUID
    role: Role
    status: domain.AccountStatus
    profile: Profile
    mfa_enabled: bool
    password_age_days: int


async def email_index(deps: Dependencies, normalised_email: str) -> str:
    """The blind index of an email: finds its account without decrypting any profile."""
    secret = await deps.secrets.get(ServiceSecrets.BLIND_INDEX)
    return keyed_hash(secret, "email", normalised_email)


async def account_for_change(
    deps: Dependencies, conn: AsyncConnection, account_id: UUID
) -> Account:
    """The account a command changes (of a signed-in person, so it exists)."""
    account = await deps.accounts.load_for_change(conn, account_id)
    if account is None:
        raise InvalidCredentials()
    return account


async def account_record(
    deps: Dependencies, conn: AsyncConnection, account_id: UUID
) -> AccountRecord:
    """The account's read-model record, with the key its ciphertexts open with."""
    record = await deps.accounts.by_id(conn, account_id)
    if record is None:
        raise InvalidCredentials()
    return record


# --- registration ------------------------------------------------------------------------------


async def register_account(
    deps: Dependencies, email: str, password: str, display_name: str, role: Role
) -> UUID:
    """Open an account; emits UserRegistered (id and role only). Refuses an invalid email, a
    weak password and a used email before writing anything."""
    try:
        normalised = domain.normalise_email(email)
    except domain.InvalidEmail:
        raise InvalidField("email", "Not a valid email address.", "email_invalid") from None
    violations = check_password(password, normalised)
    if violations:
        raise PasswordRefused("password", violations)
    index = await email_index(deps, normalised)
    async with deps.engine.connect() as conn:
        if await deps.accounts.email_index_taken(conn, index):
            raise EmailAlreadyRegistered()
    password_hash = await deps.hasher.hash(password)
    account_id = uuid7()
    now = deps.clock.now()

    async def work(conn: AsyncConnection) -> None:
        document = profile_document(normalised, display_name, None, None)
        profile = await deps.sealing.seal(conn, account_id, "profile", document)
        sealed_hash = await deps.sealing.seal(
            conn, account_id, "password", password_hash.encode("ascii")
        )
        account = Account.register(account_id, role, index, profile, sealed_hash, now)
        await deps.accounts.save(conn, account)
        await deps.outbox.put(
            conn, contract.UserRegistered(subject_id=account_id, role=role, registered_at=now)
        )

    await run_command(deps.engine, work)
    return account_id


# --- the signed-in person's account ------------------------------------------------------------


async def read_account(deps: Dependencies, account_id: UUID) -> AccountView:
    """The account with its profile decrypted (fields read as `ERASED` after shredding)."""
    async with deps.engine.connect() as conn:
        record = await account_record(deps, conn, account_id)
    return AccountView(
        user_id=record.account_id,
        role=record.role,
        status=record.status,
        profile=deps.sealing.profile(record),
        mfa_enabled=record.totp_secret is not None,
        password_age_days=max(0, (deps.clock.now() - record.password_changed_at).days),
    )


async def update_profile(
    deps: Dependencies, account_id: UUID, changes: Mapping[str, str | None]
) -> AccountView:
    """Change the given profile fields (`display_name`, `phone`, `address`; `None` clears
    phone or address, never the display name); fields not given keep their value."""
    unknown = set(changes) - set(PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"not profile fields: {sorted(unknown)}")
    if "display_name" in changes and changes["display_name"] is None:
        raise InvalidField("display_name", "The display name cannot be removed.", "missing")

    async def work(conn: AsyncConnection) -> None:
        account = await account_for_change(deps, conn, account_id)
        current = deps.sealing.profile(await account_record(deps, conn, account_id))
        if not isinstance(current.email, str) or not isinstance(current.display_name, str):
            raise AccountNotActive()
        merged = {
            "display_name": current.display_name,
            "phone": current.phone,
            "address": current.address,
            **changes,
        }
        document = profile_document(
            current.email,
            merged["display_name"] or current.display_name,
            merged["phone"] if isinstance(merged["phone"], str) else None,
            merged["address"] if isinstance(merged["address"], str) else None,
        )
        sealed = await deps.sealing.seal(conn, account_id, "profile", document)
        account.update_profile(sealed, deps.clock.now())
        await deps.accounts.save(conn, account)

    await run_command(deps.engine, work)
    return await read_account(deps, account_id)


async def change_password(
    deps: Dependencies, caller: Caller, current_password: str, new_password: str
) -> None:
    """Replace the password after checking the current one; emits PasswordChanged and ends
    every other session. A wrong current password counts as a failed sign-in."""
    account_id = caller.subject_id
    async with deps.engine.connect() as conn:
        record = await account_record(deps, conn, account_id)
        email_key = throttling.email_key(record.email_index or "")
        locked_until = await deps.sign_in_failures.locked_until(conn, email_key)
    now = deps.clock.now()
    locked = throttling.lock_in_force(locked_until, now)
    if locked is not None:
        raise SignInLocked(locked - now)
    opened = deps.sealing.open(record, "password", record.password_hash)
    if isinstance(opened, Erased) or not await deps.hasher.verify(
        current_password, opened.decode("ascii")
    ):
        failure = await throttling.sign_in_failed(deps, email_key, None, account_id)
        if isinstance(failure, SignInLocked):
            raise failure
        raise InvalidField(
            "current_password", "The current password is incorrect.", "password_incorrect"
        )
    profile = deps.sealing.profile(record)
    email = None if isinstance(profile.email, Erased) else profile.email
    violations = check_password(new_password, email)
    if new_password == current_password:
        violations.append(
            PolicyViolation("Choose a password you have not been using.", "password_reused")
        )
    if violations:
        raise PasswordRefused("new_password", violations)
    new_hash = await deps.hasher.hash(new_password)

    async def work(conn: AsyncConnection) -> None:
        account = await account_for_change(deps, conn, account_id)
        now = deps.clock.now()
        sealed = await deps.sealing.seal(conn, account_id, "password", new_hash.encode("ascii"))
        account.change_password(sealed, now)
        await deps.accounts.save(conn, account)
        revoked = await revocation.end_sessions_of(
            deps,
            conn,
            account_id,
            now,
            "password_changed",
            except_session=caller.session_id or session_of(caller.token_id),
        )
        await deps.outbox.put(conn, contract.PasswordChanged(subject_id=account_id, changed_at=now))
        if revoked is not None:
            await deps.outbox.put(conn, revoked)

    await run_command(deps.engine, work)


async def rehash_password(deps: Dependencies, account_id: UUID, password: str) -> None:
    """Store the password hashed with the current (stronger) parameters; its age does not
    change. Best effort, tried once: when the account changed meanwhile, the next sign-in
    rehashes."""
    stronger = await deps.hasher.hash(password)
    try:
        async with deps.engine.begin() as conn:
            account = await account_for_change(deps, conn, account_id)
            sealed = await deps.sealing.seal(conn, account_id, "password", stronger.encode("ascii"))
            account.rehash_password(sealed)
            await deps.accounts.save(conn, account)
    except (ConcurrencyConflict, AccountNotActive):
        return


async def close_account(deps: Dependencies, account_id: UUID) -> None:
    """Close the account: every session ends and AccountClosed starts the retention clocks."""

    async def work(conn: AsyncConnection) -> None:
        account = await account_for_change(deps, conn, account_id)
        now = deps.clock.now()
        account.close(now)
        await deps.accounts.save(conn, account)
        revoked = await revocation.end_sessions_of(deps, conn, account_id, now, "account_closed")
        await deps.outbox.put(conn, contract.AccountClosed(subject_id=account_id, closed_at=now))
        if revoked is not None:
            await deps.outbox.put(conn, revoked)

    await run_command(deps.engine, work)


# --- consumed events ---------------------------------------------------------------------------


async def shred_profile(deps: Dependencies, event: RetentionExpired, ctx: EventContext) -> None:
    """RetentionExpired for identity.profile: destroy the person's profile key (profile,
    password hash and TOTP secret with it), end their sessions, and answer: shredded with the
    key's id, or nothing held when identity never had a profile for them. Retention counts on
    an answer to every expiry of a category identity owns."""
    if event.category != domain.PROFILE_CATEGORY:
        return
    conn = ctx.conn
    tombstone = await deps.sealing.shred(conn, event.subject_id)
    if tombstone is None:
        await ctx.emit(
            contract.SubjectDataShredded(
                subject_id=event.subject_id,
                category="identity.profile",
                outcome="nothing_held",
                answered_at=deps.clock.now(),
                erasure_case_id=event.erasure_case_id,
            )
        )
        return
    account = await deps.accounts.load(conn, event.subject_id)
    if account is not None:
        account.shred(tombstone.key_id, tombstone.shredded_at)
        await deps.accounts.save(conn, account)
    revoked = await revocation.end_sessions_of(
        deps, conn, event.subject_id, deps.clock.now(), "profile_erased"
    )
    if revoked is not None:
        await ctx.emit(revoked)
    await ctx.emit(
        contract.SubjectDataShredded(
            subject_id=event.subject_id,
            category="identity.profile",
            outcome="shredded",
            key_id=tombstone.key_id,
            answered_at=tombstone.shredded_at,
            erasure_case_id=event.erasure_case_id,
        )
    )
