"""Card data and financial records, sealed under the person's keys and opened again.

A card (number, expiry, holder's name, billing address) is sealed as one value under the
person's `billing.payment_methods` key, bound to the card's id; a financial record (a charge's
description, an invoice's addressee) under their `billing.financial_records` key, bound to the
record's id. Plaintext exists only in memory, for the request. A value whose key was shredded
opens as None: erased, not an error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from confide_toolkit.keyring import Erased, Keyring
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_billing.domain import FINANCIAL_RECORDS, PAYMENT_METHODS


@dataclass(frozen=True)
class CardData:
    number: str
    exp_month: int
    exp_year: int
    cardholder_name: str
    billing_address: dict[str, str]

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def __repr__(self) -> str:
        # Never the number or the address, should a card ever reach a log line or a traceback.
        return f"CardData(last4={self.last4!r})"


async def seal_card(
    keyring: Keyring,
    conn: AsyncConnection,
    subject_id: UUID,
    payment_method_id: UUID,
    card: CardData,
) -> bytes:
    plaintext = json.dumps(
        {
            "number": card.number,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
            "cardholder_name": card.cardholder_name,
            "billing_address": card.billing_address,
        }
    ).encode()
    # A card added after an earlier card's data expired is new data the person gives: a fresh
    # key, while what the shredded key sealed stays erased.
    return await keyring.encrypt(
        conn,
        subject_id,
        PAYMENT_METHODS,
        str(payment_method_id),
        plaintext,
        new_key_after_shredding=True,
    )


async def open_card(
    keyring: Keyring,
    conn: AsyncConnection,
    subject_id: UUID,
    payment_method_id: UUID,
    sealed: bytes,
) -> CardData | None:
    opened = await keyring.decrypt(
        conn, subject_id, PAYMENT_METHODS, str(payment_method_id), sealed
    )
    if isinstance(opened, Erased):
        return None
    data = json.loads(opened)
    return CardData(
        data["number"],
        data["exp_month"],
        data["exp_year"],
        data["cardholder_name"],
        data["billing_address"],
    )


async def seal_record(
    keyring: Keyring,
    conn: AsyncConnection,
    subject_id: UUID,
    record_id: UUID,
    record: dict[str, Any],
) -> bytes:
    # The books go on after an erasure of earlier records (a person charged again): a fresh key.
    return await keyring.encrypt(
        conn,
        subject_id,
        FINANCIAL_RECORDS,
        str(record_id),
        json.dumps(record).encode(),
        new_key_after_shredding=True,
    )


async def open_record(
    keyring: Keyring, conn: AsyncConnection, subject_id: UUID, record_id: UUID, sealed: bytes
) -> dict[str, Any] | None:
    opened = await keyring.decrypt(conn, subject_id, FINANCIAL_RECORDS, str(record_id), sealed)
    if isinstance(opened, Erased):
        return None
    record: dict[str, Any] = json.loads(opened)
    return record
