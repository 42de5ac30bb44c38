"""The payment account's decisions, without I/O: cards removed or of a closed account cannot be
charged, and refunds never take more than a charge took."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from confide_billing.domain import (
    AccountNotOpen,
    ChargeNotRefundable,
    ChargeRecorded,
    PaymentAccount,
    PaymentMethodNotFound,
    PaymentMethodNotUsable,
    RefundExceedsCharge,
)

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _account_with_card() -> tuple[PaymentAccount, uuid.UUID]:
    account = PaymentAccount(uuid.uuid4())
    card = uuid.uuid4()
    account.add_card(card, "visa", b"sealed", NOW)
    return account, card


def _charged(account: PaymentAccount, card: uuid.UUID, amount: int) -> uuid.UUID:
    charge_id = uuid.uuid4()
    account.record_charge(
        ChargeRecorded(
            charge_id=charge_id,
            payment_method_id=card,
            amount_cents=amount,
            currency="EUR",
            session_type=None,
            therapist_id=None,
            sealed_description="",
            gateway_reference="ref",
            invoice_id=uuid.uuid4(),
            succeeded_at=NOW,
        )
    )
    return charge_id


def test_a_removed_card_cannot_be_charged_and_removing_it_again_records_nothing() -> None:
    account, card = _account_with_card()
    account.check_chargeable(card)
    assert account.remove_card(card, NOW)
    with pytest.raises(PaymentMethodNotUsable):
        account.check_chargeable(card)
    recorded = len(account.pending)
    assert not account.remove_card(card, NOW)
    assert len(account.pending) == recorded


def test_another_persons_card_does_not_exist() -> None:
    account, _ = _account_with_card()
    with pytest.raises(PaymentMethodNotFound):
        account.check_chargeable(uuid.uuid4())


def test_a_closed_account_removes_its_cards_and_takes_no_new_one() -> None:
    account, card = _account_with_card()
    assert account.close(NOW) == [card]
    with pytest.raises(PaymentMethodNotUsable):
        account.check_chargeable(card)
    with pytest.raises(AccountNotOpen):
        account.add_card(uuid.uuid4(), "visa", b"sealed", NOW)
    assert account.close(NOW) == []


def test_refunds_partial_then_whole_never_above_the_charge() -> None:
    account, card = _account_with_card()
    charge_id = _charged(account, card, 10_000)
    account.refund(uuid.uuid4(), charge_id, 4_000, "goodwill", NOW)
    with pytest.raises(RefundExceedsCharge) as refused:
        account.refund(uuid.uuid4(), charge_id, 6_001, "goodwill", NOW)
    assert "6000" in str(refused.value)
    account.refund(uuid.uuid4(), charge_id, 6_000, "session_cancelled", NOW)
    with pytest.raises(RefundExceedsCharge):
        account.refund(uuid.uuid4(), charge_id, 1, "goodwill", NOW)


def test_the_account_replays_to_the_same_refundable_amount() -> None:
    account, card = _account_with_card()
    charge_id = _charged(account, card, 10_000)
    account.refund(uuid.uuid4(), charge_id, 2_500, "goodwill", NOW)
    replayed = PaymentAccount.replay(account.subject_id, account.pending, len(account.pending))
    assert replayed.charges[charge_id].refundable == 7_500


def test_a_charge_never_recorded_cannot_be_refunded() -> None:
    account, _ = _account_with_card()
    with pytest.raises(ChargeNotRefundable):
        account.refund(uuid.uuid4(), uuid.uuid4(), 100, "goodwill", NOW)
