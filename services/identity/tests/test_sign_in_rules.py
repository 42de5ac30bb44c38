"""The decisions of sign-in, throttling, TOTP and refresh tokens, as pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confide_identity.handlers.sessions import RefreshVerdict, refresh_verdict, session_ended
from confide_identity.handlers.throttling import count_failure, lock_in_force
from confide_identity.handlers.totp import matching_step
from confide_identity.store import FailureCount, PresentedRefreshToken, SessionLifetime
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=30)


def fail(count: FailureCount, now: datetime = NOW, limit: int = 3) -> tuple[FailureCount, bool]:
    counted = count_failure(count, now, limit=limit, window=WINDOW, lockout=LOCKOUT)
    return counted.count, counted.lock_started


# --- throttling --------------------------------------------------------------------------------


def test_failures_within_the_window_add_up_and_the_one_reaching_the_limit_locks() -> None:
    count = FailureCount(0, NOW, None)
    count, locked = fail(count)
    assert (count.failures, locked) == (1, False)
    count, locked = fail(count, NOW + timedelta(minutes=1))
    assert (count.failures, locked) == (2, False)

    count, locked = fail(count, NOW + timedelta(minutes=2))

    assert locked
    assert count == FailureCount(3, NOW, NOW + timedelta(minutes=2) + LOCKOUT)


def test_a_window_that_ran_out_starts_the_count_again() -> None:
    count = FailureCount(2, NOW, None)

    count, locked = fail(count, NOW + WINDOW)

    assert not locked
    assert count == FailureCount(1, NOW + WINDOW, None)


def test_a_failure_while_locked_does_not_lengthen_the_lock() -> None:
    locked_until = NOW + LOCKOUT
    count = FailureCount(3, NOW, locked_until)

    count, locked = fail(count, NOW + timedelta(minutes=1))

    assert not locked
    assert count.locked_until == locked_until


def test_a_lock_that_is_over_starts_the_count_again() -> None:
    count = FailureCount(3, NOW - WINDOW / 2, NOW)

    count, locked = fail(count, NOW)

    assert (count, locked) == (FailureCount(1, NOW, None), False)


def test_a_lock_is_in_force_until_it_ends() -> None:
    assert lock_in_force(NOW + timedelta(seconds=1), NOW) == NOW + timedelta(seconds=1)
    assert lock_in_force(NOW, NOW) is None
    assert lock_in_force(None, NOW) is None


# --- TOTP --------------------------------------------------------------------------------------

SECRET = b"twenty-bytes-secret!"


def code_at(moment: datetime) -> str:
    return TOTP(SECRET, 6, SHA1(), 30).generate(int(moment.timestamp())).decode()  # noqa: S303


@pytest.mark.parametrize("drift", [-30, 0, 30])
def test_a_code_of_this_step_or_a_neighbour_matches_its_step(drift: int) -> None:
    moment = NOW + timedelta(seconds=drift)
    assert matching_step(SECRET, code_at(moment), NOW) == int(moment.timestamp()) // 30


@pytest.mark.parametrize("code", ["", "12ab56", "1234567"])
def test_malformed_codes_match_no_step(code: str) -> None:
    assert matching_step(SECRET, code, NOW) is None


def test_a_code_two_steps_away_matches_no_step() -> None:
    stale = code_at(NOW - timedelta(seconds=60))
    assert stale != code_at(NOW)
    assert matching_step(SECRET, stale, NOW) is None


# --- refresh tokens and sessions ---------------------------------------------------------------


def presented(**changes: object) -> PresentedRefreshToken:
    values: dict[str, object] = {
        "spent_at": None,
        "session_id": uuid.uuid4(),
        "account_id": uuid.uuid4(),
        "auth_time": NOW - timedelta(hours=1),
        "expires_at": NOW + timedelta(days=1),
        "revoked_at": None,
        "role": "client",
        "account_status": "active",
    }
    values.update(changes)
    return PresentedRefreshToken(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("token", "verdict"),
    [
        (None, RefreshVerdict.UNKNOWN),
        (presented(), RefreshVerdict.USABLE),
        (presented(spent_at=NOW), RefreshVerdict.REUSED),
        # A spent token of an ended session still counts as reuse: the family goes.
        (presented(spent_at=NOW, revoked_at=NOW), RefreshVerdict.REUSED),
        (presented(revoked_at=NOW), RefreshVerdict.ENDED),
        (presented(expires_at=NOW), RefreshVerdict.ENDED),
        (presented(account_status="closed"), RefreshVerdict.ENDED),
    ],
)
def test_a_presented_refresh_token_is_judged(
    token: PresentedRefreshToken | None, verdict: RefreshVerdict
) -> None:
    assert refresh_verdict(token, NOW) is verdict


def test_a_session_ends_when_revoked_or_expired() -> None:
    assert not session_ended(SessionLifetime(None, NOW + timedelta(seconds=1)), NOW)
    assert session_ended(SessionLifetime(NOW, NOW + timedelta(days=1)), NOW)
    assert session_ended(SessionLifetime(None, NOW), NOW)
    assert session_ended(None, NOW)
