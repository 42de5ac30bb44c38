"""Adding, listing and removing a person's cards.

A card is checked (`cards.check_card`), its security code handed to the gateway for
verification and then dropped, and the rest sealed under the person's `billing.payment_methods`
key. Every read answers brand, last 4 and expiry only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from confide_events import billing as published
from confide_toolkit.commands import run_command
from confide_toolkit.ids import uuid7
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing import store
from confide_billing.cards import check_card
from confide_billing.domain import CardNotVerified, PaymentMethodNotFound
from confide_billing.gateway import CardDetails
from confide_billing.handlers import Dependencies
from confide_billing.handlers.sealing import CardData, open_card, seal_card


@dataclass(frozen=True)
class AddCard:
    subject_id: UUID
    card_number: str
    exp_month: int
    exp_year: int
    cvc: str
    cardholder_name: str
    billing_address: dict[str, str]

    def __repr__(self) -> str:
        return f"AddCard(subject_id={self.subject_id!s})"


@dataclass(frozen=True)
class MaskedCard:
    """A card as every read shows it. After its data was erased only brand and times remain."""

    payment_method_id: UUID
    brand: str
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    added_at: datetime

    @property
    def erased(self) -> bool:
        return self.last4 is None


async def add_card(deps: Dependencies, command: AddCard) -> MaskedCard:
    """Check and verify the card, store it sealed; publishes `PaymentMethodAdded` (id and brand
    only). Refuses a card of a closed account."""
    now = deps.clock.now()
    checked = check_card(command.card_number, command.exp_month, command.exp_year, command.cvc, now)
    details = CardDetails(checked.number, checked.exp_month, checked.exp_year)
    if not await deps.gateway.verify_card(details, command.cvc):
        raise CardNotVerified()
    card = CardData(
        checked.number,
        checked.exp_month,
        checked.exp_year,
        command.cardholder_name,
        command.billing_address,
    )

    async def work(conn: AsyncConnection) -> MaskedCard:
        account = await deps.accounts.load_for_change(conn, command.subject_id)
        account.check_open()
        payment_method_id = uuid7()
        sealed = await seal_card(deps.keyring, conn, command.subject_id, payment_method_id, card)
        account.add_card(payment_method_id, checked.brand, sealed, now)
        await deps.accounts.save(conn, account)
        await deps.outbox.put(
            conn,
            published.PaymentMethodAdded(
                payment_method_id=payment_method_id,
                subject_id=command.subject_id,
                brand=checked.brand,
                added_at=now,
            ),
        )
        return MaskedCard(
            payment_method_id,
            checked.brand,
            checked.last4,
            checked.exp_month,
            checked.exp_year,
            now,
        )

    return await run_command(deps.engine, work)


async def list_cards(deps: Dependencies, subject_id: UUID) -> list[MaskedCard]:
    """The person's cards in use, newest first, masked."""
    async with deps.engine.connect() as conn:
        found = []
        for stored in await store.cards_of(conn, subject_id):
            card = await open_card(
                deps.keyring, conn, subject_id, stored.payment_method_id, stored.sealed_card
            )
            found.append(
                MaskedCard(
                    stored.payment_method_id,
                    stored.brand,
                    None if card is None else card.last4,
                    None if card is None else card.exp_month,
                    None if card is None else card.exp_year,
                    stored.added_at,
                )
            )
        return found


async def remove_card(deps: Dependencies, subject_id: UUID, payment_method_id: UUID) -> None:
    """The card can no longer be charged from the commit on; publishes `PaymentMethodRemoved`
    (its retention clock starts). Removing it again changes nothing; anyone else's card does
    not exist."""

    async def work(conn: AsyncConnection) -> None:
        account = await deps.accounts.load_for_change(conn, subject_id)
        if payment_method_id not in account.cards:
            raise PaymentMethodNotFound(payment_method_id)
        now = deps.clock.now()
        if account.remove_card(payment_method_id, now):
            await deps.accounts.save(conn, account)
            await deps.outbox.put(
                conn,
                published.PaymentMethodRemoved(
                    payment_method_id=payment_method_id, subject_id=subject_id, removed_at=now
                ),
            )

    await run_command(deps.engine, work)
