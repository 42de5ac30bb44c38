"""The consent ledger's rules, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from confide_consent.domain import (
    ConsentGranted,
    ConsentLedger,
    ConsentRevoked,
    Receipt,
    Recipient,
    new_recipient,
    resolve_purpose,
)
from confide_consent.errors import (
    AccountIsClosed,
    CategoriesNotCovered,
    ConsentNotFound,
    PolicyHashMismatch,
    PurposeNeverAllowed,
    PurposeTakesNoRecipient,
    RecipientNotApplicable,
    RecipientNotRegisteredForPurpose,
    RecipientRequired,
    StalePolicyVersion,
    UnknownPolicyVersion,
    UnknownPurpose,
    UnknownRecipient,
)
from confide_consent.purposes import PURPOSES, RESEARCH, SHARE_WITH_PROVIDER

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ANY_RECEIPT = mock.ANY
CLINIC = Recipient(
    uuid.uuid4(), "Northside Clinic", "healthcare_provider", ("share_with_provider",)
)


def grant_args(**overrides: Any) -> dict[str, Any]:
    return {
        "consent_id": uuid.uuid4(),
        "purpose": SHARE_WITH_PROVIDER,
        "recipient_id": CLINIC.recipient_id,
        "recipient": CLINIC,
        "data_categories": ["messaging.session_notes"],
        "policy_version": "2026-01",
        "policy_hash": None,
        "method": "web_form",
        "now": T0,
        **overrides,
    }


@pytest.fixture
def ledger() -> ConsentLedger:
    return ConsentLedger(uuid.uuid4())


@pytest.mark.parametrize("code", ["sell_data", "share_for_marketing", "marketing"])
def test_selling_and_marketing_purposes_are_never_allowed(code: str) -> None:
    with pytest.raises(PurposeNeverAllowed) as refused:
        resolve_purpose(code)
    assert refused.value.field == "purpose"
    assert "never" in str(refused.value)


def test_unknown_purpose_is_refused() -> None:
    with pytest.raises(UnknownPurpose):
        resolve_purpose("astrology")


def test_every_policy_hash_is_the_sha256_of_its_text() -> None:
    import hashlib

    for purpose in PURPOSES.values():
        for policy in purpose.policies:
            assert policy.hash == hashlib.sha256(policy.text.encode()).hexdigest()


def test_grant_records_who_what_to_whom_which_policy_when_and_how(ledger: ConsentLedger) -> None:
    consent = ledger.grant(**grant_args())
    assert consent.subject_id == ledger.subject_id
    assert consent.purpose == "share_with_provider"
    assert consent.recipient_id == CLINIC.recipient_id
    assert consent.data_categories == ("messaging.session_notes",)
    assert consent.policy_version == "2026-01"
    assert consent.policy_hash == SHARE_WITH_PROVIDER.current_policy.hash
    assert (consent.granted_at, consent.method) == (T0, "web_form")
    assert [type(e) for e in ledger.pending] == [ConsentGranted]


def test_stale_policy_version_is_refused_and_names_the_current_one(ledger: ConsentLedger) -> None:
    with pytest.raises(StalePolicyVersion) as refused:
        ledger.grant(**grant_args(policy_version="2025-06"))
    assert refused.value.current_version == "2026-01"
    assert ledger.pending == []


def test_policy_version_that_never_existed_is_refused(ledger: ConsentLedger) -> None:
    with pytest.raises(UnknownPolicyVersion):
        ledger.grant(**grant_args(policy_version="1999-01"))


def test_hash_of_another_text_is_refused(ledger: ConsentLedger) -> None:
    with pytest.raises(PolicyHashMismatch):
        ledger.grant(**grant_args(policy_hash="0" * 64))


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"recipient_id": None, "recipient": None}, RecipientRequired),
        ({"recipient": None}, UnknownRecipient),
        (
            {"recipient": Recipient(CLINIC.recipient_id, "X", "research_institution", ())},
            RecipientNotRegisteredForPurpose,
        ),
        (
            {"purpose": RESEARCH, "data_categories": ["messaging.messages"]},
            RecipientNotApplicable,
        ),
        ({"data_categories": ["billing.payment_methods"]}, CategoriesNotCovered),
        ({"data_categories": []}, CategoriesNotCovered),
    ],
)
def test_grant_refusals_record_nothing(
    ledger: ConsentLedger, overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        ledger.grant(**grant_args(**overrides))
    assert ledger.pending == [] and ledger.consents == {}


def test_validity_starts_at_grant_and_ends_at_revocation(ledger: ConsentLedger) -> None:
    granted = ledger.grant(**grant_args())
    revoked_at = T0 + timedelta(hours=1)
    assert ledger.revoke(granted.consent_id, revoked_at)
    consent = ledger.consent(granted.consent_id)
    assert not consent.valid_at(T0 - timedelta(microseconds=1))
    assert consent.valid_at(T0)
    assert consent.valid_at(revoked_at - timedelta(microseconds=1))
    assert not consent.valid_at(revoked_at)
    assert consent.revoke_reason == "subject_withdrew"


def test_revoking_twice_records_one_revocation(ledger: ConsentLedger) -> None:
    consent = ledger.grant(**grant_args())
    assert ledger.revoke(consent.consent_id, T0 + timedelta(minutes=1))
    assert not ledger.revoke(consent.consent_id, T0 + timedelta(minutes=2))
    assert [type(e) for e in ledger.pending] == [ConsentGranted, ConsentRevoked]
    assert ledger.consent(consent.consent_id).revoked_at == T0 + timedelta(minutes=1)


def test_revoking_a_consent_not_in_the_ledger_is_refused(ledger: ConsentLedger) -> None:
    with pytest.raises(ConsentNotFound):
        ledger.revoke(uuid.uuid4(), T0)


def test_closing_withdraws_every_active_consent_with_the_reason(ledger: ConsentLedger) -> None:
    first = ledger.grant(**grant_args())
    second = ledger.grant(**grant_args())
    ledger.revoke(first.consent_id, T0 + timedelta(minutes=1))
    closed_at = T0 + timedelta(days=1)

    withdrawn = ledger.close(closed_at)

    assert [(c.consent_id, c.revoked_at, c.revoke_reason) for c in withdrawn] == [
        (second.consent_id, closed_at, "account_closed")
    ]
    assert ledger.consent(second.consent_id) == withdrawn[0]
    assert ledger.consent(first.consent_id).revoke_reason == "subject_withdrew"
    assert ledger.close(closed_at) == []
    with pytest.raises(AccountIsClosed):
        ledger.grant(**grant_args())


def test_replaying_the_events_rebuilds_the_same_ledger(ledger: ConsentLedger) -> None:
    consent = ledger.grant(**grant_args())
    ledger.revoke(consent.consent_id, T0 + timedelta(minutes=5))
    ledger.grant(**grant_args())

    replayed = ConsentLedger.replay(ledger.subject_id, ledger.pending, len(ledger.pending))

    assert replayed.consents == ledger.consents


def test_a_ledger_restored_from_its_snapshot_decides_as_the_replayed_one(
    ledger: ConsentLedger,
) -> None:
    kept = ledger.grant(**grant_args())
    ledger.issue_receipt(kept.consent_id, Receipt(uuid.uuid4(), "kid-1", "jws", T0))
    withdrawn = ledger.grant(**grant_args())
    ledger.revoke(withdrawn.consent_id, T0 + timedelta(minutes=1))
    at_snapshot = len(ledger.pending)
    snapshot = (at_snapshot, ledger.snapshot_state())
    later = ledger.grant(**grant_args(now=T0 + timedelta(hours=1)))
    events = list(ledger.pending)

    restored = ConsentLedger.replay(
        ledger.subject_id, events[at_snapshot:], len(events), snapshot=snapshot
    )
    replayed = ConsentLedger.replay(ledger.subject_id, events, len(events))

    assert restored.consents == replayed.consents
    assert restored.receipt_ids == replayed.receipt_ids == {kept.consent_id: ANY_RECEIPT}
    assert restored.snapshot_version == at_snapshot
    # A receipt is never issued twice, also for a consent known only from the snapshot.
    with pytest.raises(ValueError, match="already has a receipt"):
        restored.issue_receipt(kept.consent_id, Receipt(uuid.uuid4(), "kid-1", "jws", T0))
    # Nor for one granted on the restored ledger, whose receipt the snapshot cannot know of.
    fresh = restored.grant(**grant_args(now=T0 + timedelta(hours=2)))
    restored.issue_receipt(fresh.consent_id, Receipt(uuid.uuid4(), "kid-1", "jws", T0))
    with pytest.raises(ValueError, match="already has a receipt"):
        restored.issue_receipt(fresh.consent_id, Receipt(uuid.uuid4(), "kid-1", "jws", T0))
    # Withdrawing twice records nothing; the snapshot's active consent is withdrawn on close.
    assert restored.revoke(withdrawn.consent_id, T0 + timedelta(hours=2)) is False
    closing = restored.close(T0 + timedelta(days=1))
    assert [c.consent_id for c in closing] == [
        kept.consent_id,
        later.consent_id,
        fresh.consent_id,
    ]


def test_recipients_register_only_for_purposes_that_name_one() -> None:
    recipient = new_recipient(
        uuid.uuid4(), "Clinic", "healthcare_provider", ["share_with_provider"]
    )
    assert recipient.purposes == ("share_with_provider",)
    for purposes in (["research"], ["share_for_marketing"], []):
        with pytest.raises(PurposeTakesNoRecipient):
            new_recipient(uuid.uuid4(), "Clinic", "healthcare_provider", purposes)
