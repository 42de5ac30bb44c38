"""The sign-in handler's decisions (throttling, timing, second factor) with in-memory
dependencies: no PostgreSQL, no Kafka."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confide_events import identity as contract
from confide_identity import domain
from confide_identity.handlers import Dependencies, sessions
from confide_identity.handlers.accounts import email_index
from confide_identity.handlers.sealing import profile_document
from confide_identity.store import AccountRecord
from confide_toolkit.clock import FrozenClock
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from .fakes import CountingHasher, FakeAccounts, FakeOutbox, FakeSessions, fake_dependencies

EMAIL = "ada.lovelace@example.org"
PASSWORD = "violet-harbour-lantern-92"
TOTP_SECRET = b"twenty-bytes-secret!"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def deps(clock: FrozenClock) -> Dependencies:
    return fake_dependencies(clock, account_failure_limit=3, lockout=timedelta(minutes=15))


async def add_account(
    deps: Dependencies,
    *,
    status: domain.AccountStatus = "active",
    totp_secret: bytes | None = None,
) -> AccountRecord:
    record = AccountRecord(
        account_id=uuid.uuid4(),
        role="client",
        status=status,
        email_index=await email_index(deps, EMAIL),
        profile=profile_document(EMAIL, "Ada", None, None),
        password_hash=(await deps.hasher.hash(PASSWORD)).encode("ascii"),
        password_changed_at=deps.clock.now(),
        totp_pending=None,
        totp_secret=totp_secret,
        data_key=None,
    )
    assert isinstance(deps.accounts, FakeAccounts)
    deps.accounts.records[record.account_id] = record
    return record


def verifications(deps: Dependencies) -> int:
    assert isinstance(deps.hasher, CountingHasher)
    return deps.hasher.verifications


def published(deps: Dependencies) -> list[object]:
    assert isinstance(deps.outbox, FakeOutbox)
    return list(deps.outbox.events)


def open_sessions(deps: Dependencies) -> int:
    assert isinstance(deps.sessions, FakeSessions)
    return len(deps.sessions.sessions)


async def test_the_right_password_opens_a_session(deps: Dependencies) -> None:
    await add_account(deps)

    pair = await sessions.sign_in(deps, EMAIL, PASSWORD, None, "192.0.2.1")

    assert pair.refresh_token.startswith("crt_")
    assert open_sessions(deps) == 1


async def test_a_wrong_password_and_an_unknown_email_cost_one_verification_each(
    deps: Dependencies,
) -> None:
    await add_account(deps)

    with pytest.raises(domain.InvalidCredentials):
        await sessions.sign_in(deps, EMAIL, "not-my-password-9", None, None)
    after_wrong_password = verifications(deps)
    with pytest.raises(domain.InvalidCredentials):
        await sessions.sign_in(deps, "nobody@example.org", PASSWORD, None, None)

    assert after_wrong_password == 1
    assert verifications(deps) == 2
    assert open_sessions(deps) == 0


async def test_a_closed_account_is_refused_like_an_unknown_email(deps: Dependencies) -> None:
    await add_account(deps, status="closed")

    with pytest.raises(domain.InvalidCredentials):
        await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)
    assert verifications(deps) == 1


async def test_the_failure_that_reaches_the_limit_locks_the_email_and_announces_it(
    deps: Dependencies, clock: FrozenClock
) -> None:
    account = await add_account(deps)

    for _ in range(2):
        with pytest.raises(domain.InvalidCredentials):
            await sessions.sign_in(deps, EMAIL, "not-my-password-9", None, None)
    with pytest.raises(domain.SignInLocked) as locked:
        await sessions.sign_in(deps, EMAIL, "not-my-password-9", None, None)
    checked_before = verifications(deps)
    with pytest.raises(domain.SignInLocked) as still_locked:
        await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)

    assert locked.value.retry_after == timedelta(minutes=15)
    assert still_locked.value.retry_after == timedelta(minutes=15)
    assert verifications(deps) == checked_before  # refused before any verification
    [announcement] = published(deps)
    assert isinstance(announcement, contract.AccountLocked)
    assert announcement.subject_id == account.account_id
    clock.advance(timedelta(minutes=15))
    await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)
    assert open_sessions(deps) == 1


async def test_an_unknown_email_locks_without_announcing_anything(deps: Dependencies) -> None:
    for _ in range(2):
        with pytest.raises(domain.InvalidCredentials):
            await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)
    with pytest.raises(domain.SignInLocked):
        await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)
    assert published(deps) == []


async def test_an_address_failing_on_many_emails_gets_too_many_attempts(
    clock: FrozenClock,
) -> None:
    deps = fake_dependencies(clock, account_failure_limit=10, address_failure_limit=2)
    for n in range(2):
        with pytest.raises(domain.InvalidCredentials):
            await sessions.sign_in(deps, f"person{n}@example.org", PASSWORD, None, "192.0.2.7")

    with pytest.raises(domain.TooManySignInAttempts):
        await sessions.sign_in(deps, "another@example.org", PASSWORD, None, "192.0.2.7")
    await add_account(deps)
    await sessions.sign_in(deps, EMAIL, PASSWORD, None, "198.51.100.1")


def _code(clock: FrozenClock) -> str:
    return TOTP(TOTP_SECRET, 6, SHA1(), 30).generate(int(clock.now().timestamp())).decode()  # noqa: S303


async def test_the_second_factor_is_required_checked_and_accepted_once(
    deps: Dependencies, clock: FrozenClock
) -> None:
    await add_account(deps, totp_secret=TOTP_SECRET)

    with pytest.raises(domain.TotpRequired):
        await sessions.sign_in(deps, EMAIL, PASSWORD, None, None)
    with pytest.raises(domain.InvalidTotpCode):
        await sessions.sign_in(deps, EMAIL, PASSWORD, "000000", None)
    await sessions.sign_in(deps, EMAIL, PASSWORD, _code(clock), None)
    with pytest.raises(domain.InvalidTotpCode):
        await sessions.sign_in(deps, EMAIL, PASSWORD, _code(clock), None)  # replayed

    assert open_sessions(deps) == 1


async def test_wrong_codes_count_as_failed_sign_ins(deps: Dependencies) -> None:
    await add_account(deps, totp_secret=TOTP_SECRET)

    for _ in range(2):
        with pytest.raises(domain.InvalidTotpCode):
            await sessions.sign_in(deps, EMAIL, PASSWORD, "000000", None)
    with pytest.raises(domain.SignInLocked):
        await sessions.sign_in(deps, EMAIL, PASSWORD, "000000", None)
