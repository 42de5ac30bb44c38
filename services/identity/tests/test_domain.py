"""The account aggregate and the password policy, without I/O."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from confide_identity import domain
from confide_identity.passwords import check_password

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def new_account() -> domain.Account:
    """A registered account as loaded from its stream (nothing pending)."""
    registered = domain.Account.register(
        uuid.uuid4(), "client", "index", "cHJvZmlsZQ==", "aGFzaA==", NOW
    )
    return domain.Account.replay(registered.pending, 1)


def kinds(password: str, email: str | None = "ada.lovelace@example.org") -> set[str]:
    return {v.kind for v in check_password(password, email)}


def test_emails_written_differently_normalise_to_one_address() -> None:
    assert domain.normalise_email("  Ada.Lovelace@Example.ORG ") == "ada.lovelace@example.org"


@pytest.mark.parametrize(
    "raw", ["", "no-at-sign", "two@@example.org", "space in@example.org", "a@nodot", "a@-x.org"]
)
def test_malformed_emails_are_refused(raw: str) -> None:
    with pytest.raises(domain.InvalidEmail):
        domain.normalise_email(raw)


def test_a_long_uncommon_passphrase_is_accepted() -> None:
    assert check_password("violet-harbour-lantern-92", "ada.lovelace@example.org") == []


def test_passwords_shorter_than_twelve_characters_are_refused() -> None:
    assert "password_too_short" in kinds("Xk9#mPq2$vL")


@pytest.mark.parametrize(
    "password", ["password1234", "Password2031!", "qwertyuiop123", "P@ssw0rd2024!!", "123456789012"]
)
def test_common_and_breached_passwords_are_refused_with_their_usual_decorations(
    password: str,
) -> None:
    assert "password_common" in kinds(password)


def test_a_password_containing_the_email_is_refused() -> None:
    assert "password_has_email" in kinds("ADA.LOVELACE-secret-77")


def test_a_password_of_few_distinct_characters_is_refused() -> None:
    assert "password_repetitive" in kinds("abababababababab")


def test_policy_messages_never_quote_the_password() -> None:
    password = "Password2031!"
    assert all(password not in v.message for v in check_password(password, None))


def test_registering_records_one_pending_event_on_a_new_stream() -> None:
    account = domain.Account.register(uuid.uuid4(), "therapist", "ix", "cA==", "aA==", NOW)
    assert account.version == 0
    assert [type(e) for e in account.pending] == [domain.AccountRegistered]


def test_a_closed_account_refuses_changes() -> None:
    account = new_account()
    account.close(NOW)
    with pytest.raises(domain.AccountNotActive):
        account.update_profile("eA==", NOW)
    with pytest.raises(domain.AccountNotActive):
        account.change_password("eA==", NOW)
    assert [type(e) for e in account.pending] == [domain.AccountClosed]


def test_totp_is_enforced_only_after_confirmation() -> None:
    account = new_account()
    with pytest.raises(domain.NoTotpEnrolment):
        account.confirm_totp(NOW)
    account.start_totp_enrolment("c2VjcmV0", NOW)
    assert not account.mfa_enabled
    account.confirm_totp(NOW)
    assert account.mfa_enabled
    with pytest.raises(domain.TotpAlreadyEnabled):
        account.start_totp_enrolment("b3RoZXI=", NOW)


def test_shredding_twice_records_one_erasure() -> None:
    account = new_account()
    key_id = uuid.uuid4()
    account.shred(key_id, NOW)
    assert account.status == "erased" and account.email_index is None
    account.shred(key_id, NOW)
    assert [type(e) for e in account.pending] == [domain.ProfileShredded]


def test_password_age_counts_from_the_last_change_not_a_rehash() -> None:
    account = new_account()
    account.change_password("bmV3", NOW + timedelta(days=10))
    account.rehash_password("c3Ryb25nZXI=")
    assert account.password_age_days(NOW + timedelta(days=100)) == 90


def test_a_stream_rebuilds_to_the_same_state_as_the_decisions_left_it() -> None:
    account = domain.Account.register(uuid.uuid4(), "therapist", "ix", "cA==", "aA==", NOW)
    account.update_profile("cDI=", NOW)
    account.close(NOW)
    history = list(account.pending)

    rebuilt = domain.Account.replay(history, 3)

    assert rebuilt == replace(account, version=3, pending=[])
