"""The consent service's tables, repositories and projections.

- The ledger streams live in the toolkit's event store (`stored_events`), one per person.
- `consents` is the projection of those streams: one row per consent with its validity interval
  [granted_at, revoked_at) and its receipt. Open intervals are the current state; the intervals
  themselves are the history ("was consent X valid at T", "what did S allow at T"). It is
  written in the transaction of each append and rebuilt from the streams, while the service
  serves, by `python -m confide_toolkit.read_models rebuild consent`.
- `recipients` are the registered third parties, reference data kept here (not event-sourced).
- The receipt signing keys are kept encrypted by the service's keyring (see `ReceiptKeys`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast

from confide_toolkit.auth import public_jwk
from confide_toolkit.clock import Clock
from confide_toolkit.consents import valid_at_clause
from confide_toolkit.database import NAMING_CONVENTION
from confide_toolkit.event_store import AppendProjection, EventStore, RecordedEvent
from confide_toolkit.keyring import Erased, Keyring
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    bindparam,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_consent.domain import (
    LEDGER_EVENTS,
    Consent,
    ConsentGranted,
    ConsentLedger,
    ConsentRevoked,
    Receipt,
    ReceiptIssued,
    Recipient,
)

metadata = MetaData(naming_convention=NAMING_CONVENTION)

consents = Table(
    "consents",
    metadata,
    Column("consent_id", Uuid, primary_key=True),
    Column("subject_id", Uuid, nullable=False, index=True),
    Column("purpose", String(64), nullable=False),
    Column("recipient_id", Uuid, nullable=True),
    Column("data_categories", ARRAY(Text), nullable=False),
    Column("policy_version", String(32), nullable=False),
    Column("policy_hash", String(64), nullable=False),
    Column("method", String(32), nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoke_reason", String(32), nullable=True),
    Column("receipt_id", Uuid, nullable=True, unique=True),
    Column("receipt_kid", String(64), nullable=True),
    Column("receipt_jws", Text, nullable=True),
    Column("receipt_issued_at", DateTime(timezone=True), nullable=True),
)
"""Projection of the ledgers: each consent's validity interval and receipt."""

recipients = Table(
    "recipients",
    metadata,
    Column("recipient_id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(64), nullable=False),
    Column("purposes", ARRAY(Text), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("registered_by", Uuid, nullable=True),
)
"""Registered third parties (organisations, never people) that consents may name."""

receipt_signing_keys = Table(
    "receipt_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("public_jwk", JSONB, nullable=False),
    Column("sealed_private_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)
"""The Ed25519 keys receipts are signed with; the private half sealed by the keyring."""


LEDGER_SNAPSHOT_SCHEMA: Final = 2
"""The shape of `ConsentLedger.snapshot_state`; a new shape needs a new number (old snapshots
are then ignored and replaced)."""
SNAPSHOT_EVERY: Final = 20
"""Events a load may replay on top of the newest snapshot before a new one is saved: a grant
records two, so a person's ledger loads in two short queries however many consents it holds."""

# --- the ledger ------------------------------------------------------------------------------


class Ledgers:
    """Loads and saves consent ledgers through the event store (projections included)."""

    def __init__(self, clock: Clock) -> None:
        self.events = EventStore(LEDGER_EVENTS, clock, projections=[project_consents])

    async def load_for_change(self, conn: AsyncConnection, subject_id: uuid.UUID) -> ConsentLedger:
        """The ledger, locked until the transaction ends: commands on one person's ledger
        queue up instead of racing (optimistic concurrency still guards the append)."""
        return await self.load(conn, subject_id, for_change=True)

    async def load(
        self, conn: AsyncConnection, subject_id: uuid.UUID, *, for_change: bool = False
    ) -> ConsentLedger:
        """The ledger as its stream stands: its snapshot and the events after (locked first
        with `for_change`, as `load_for_change` does)."""
        stream = await self.events.load_stream(
            conn, subject_id, snapshot_schema=LEDGER_SNAPSHOT_SCHEMA, for_change=for_change
        )
        return ConsentLedger.replay(
            subject_id,
            (r.event for r in stream.events),
            stream.version,
            snapshot=(stream.snapshot.version, stream.snapshot.state) if stream.snapshot else None,
        )

    async def save(self, conn: AsyncConnection, ledger: ConsentLedger) -> list[RecordedEvent]:
        """Append the ledger's pending events (and a new snapshot when loads have grown long);
        raises `ConcurrencyConflict` if the stream moved on."""
        return await self.events.save(
            conn,
            ledger.subject_id,
            ledger,
            snapshot_schema=LEDGER_SNAPSHOT_SCHEMA,
            snapshot_every=SNAPSHOT_EVERY,
        )


# Built once: a statement built per event cost the projection more CPU than running it.
_INSERT_CONSENT = insert(consents)
# The SET columns are the parameters' names (all but the WHERE's).
_UPDATE_CONSENT = update(consents).where(consents.c.consent_id == bindparam("of_consent"))


async def _project_consents(conn: AsyncConnection, records: Sequence[RecordedEvent]) -> None:
    """Keep `consents` in step with the ledger events of one append (or of a rebuild's batch),
    in its transaction. A grant appends the consent and its receipt together: the row is
    inserted once, receipt included, instead of inserted and then updated."""
    new_rows: dict[uuid.UUID, dict[str, Any]] = {}
    for record in records:
        event = record.event
        change: dict[str, Any]
        if isinstance(event, ConsentGranted):
            new_rows[event.consent_id] = {
                "consent_id": event.consent_id,
                "subject_id": record.stream_id,
                "purpose": event.purpose,
                "recipient_id": event.recipient_id,
                "data_categories": list(event.data_categories),
                "policy_version": event.policy_version,
                "policy_hash": event.policy_hash,
                "method": event.method,
                "granted_at": event.granted_at,
                "revoked_at": None,
                "revoke_reason": None,
                "receipt_id": None,
                "receipt_kid": None,
                "receipt_jws": None,
                "receipt_issued_at": None,
            }
            continue
        if isinstance(event, ReceiptIssued):
            change = {
                "receipt_id": event.receipt_id,
                "receipt_kid": event.kid,
                "receipt_jws": event.jws,
                "receipt_issued_at": event.issued_at,
            }
        elif isinstance(event, ConsentRevoked):
            change = {"revoked_at": event.revoked_at, "revoke_reason": event.reason}
        else:
            continue
        row = new_rows.get(event.consent_id)
        if row is not None:
            row.update(change)
        else:
            await conn.execute(_UPDATE_CONSENT, {"of_consent": event.consent_id, **change})
    if new_rows:
        await conn.execute(_INSERT_CONSENT, list(new_rows.values()))


project_consents = AppendProjection(_project_consents)
"""The `consents` read model's projection of the ledger streams."""


# --- reading the projection ------------------------------------------------------------------


def _consent(row: Any) -> Consent:
    receipt = (
        Receipt(row.receipt_id, row.receipt_kid, row.receipt_jws, row.receipt_issued_at)
        if row.receipt_id is not None
        else None
    )
    # The terms map as in every read model of consents; the ledger adds method and receipt.
    return Consent.from_row(row, method=row.method, receipt=receipt)


async def find_consent(conn: AsyncConnection, consent_id: uuid.UUID) -> Consent | None:
    """One consent from the projection, or None."""
    row = (await conn.execute(select(consents).where(consents.c.consent_id == consent_id))).first()
    return None if row is None else _consent(row)


async def list_consents(
    conn: AsyncConnection,
    subject_id: uuid.UUID,
    *,
    limit: int,
    after: uuid.UUID | None = None,
    valid_at: datetime | None = None,
    status: Literal["active", "revoked"] | None = None,
) -> list[Consent]:
    """A person's consents, newest first (consent ids are UUIDv7, so they sort by time), after
    the cursor `after`; with `valid_at`, only those in force at that moment; with `status`,
    only those active (not revoked) or revoked now."""
    statement = select(consents).where(consents.c.subject_id == subject_id)
    if after is not None:
        statement = statement.where(consents.c.consent_id < after)
    if status is not None:
        revoked = consents.c.revoked_at.is_not(None)
        statement = statement.where(revoked if status == "revoked" else ~revoked)
    if valid_at is not None:
        statement = statement.where(valid_at_clause(consents, valid_at))
    rows = await conn.execute(statement.order_by(consents.c.consent_id.desc()).limit(limit))
    return [_consent(row) for row in rows]


# --- recipients ------------------------------------------------------------------------------


def _recipient(row: Any) -> Recipient:
    return Recipient(row.recipient_id, row.name, row.kind, tuple(row.purposes))


async def find_recipient(conn: AsyncConnection, recipient_id: uuid.UUID) -> Recipient | None:
    row = (
        await conn.execute(select(recipients).where(recipients.c.recipient_id == recipient_id))
    ).first()
    return None if row is None else _recipient(row)


async def list_recipients(
    conn: AsyncConnection, *, limit: int, after: uuid.UUID | None = None
) -> list[Recipient]:
    statement = select(recipients)
    if after is not None:
        statement = statement.where(recipients.c.recipient_id > after)
    rows = await conn.execute(statement.order_by(recipients.c.recipient_id).limit(limit))
    return [_recipient(row) for row in rows]


async def recipient_name_taken(conn: AsyncConnection, name: str) -> bool:
    found = await conn.scalar(select(literal(True)).where(recipients.c.name == name))
    return bool(found)


async def add_recipient(
    conn: AsyncConnection,
    recipient: Recipient,
    registered_at: datetime,
    registered_by: uuid.UUID | None,
) -> None:
    await conn.execute(
        insert(recipients).values(
            recipient_id=recipient.recipient_id,
            name=recipient.name,
            kind=recipient.kind,
            purposes=list(recipient.purposes),
            registered_at=registered_at,
            registered_by=registered_by,
        )
    )


# --- receipt signing keys --------------------------------------------------------------------

# The keyring seals the private keys under a data key of this pseudo-subject: sealed bytes are
# bound to the key's kid, and KEK rotation (`Keyring.rewrap_all`) covers them with every other
# data key, so no key material is ever stored in plaintext nor left behind by a rotation.
RECEIPT_KEYS_SUBJECT: Final = uuid.uuid5(
    uuid.NAMESPACE_URL, "https://confide.dev/consent/receipt-keys"
)
RECEIPT_KEYS_CATEGORY: Final = "consent.receipt_signing_key"
_CREATE_KEY_LOCK: Final = "confide.consent.receipt-signing-key"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


CURRENT_KEY_TTL: Final = 60.0
"""Seconds a replica keeps signing with the key it last read as current before reading again:
after a rotation, receipts may carry the previous key that long, which stays verifiable (every
key ever used is served at GET /v1/receipt-keys); it saves a query on every grant."""


class ReceiptKeys:
    """The service's receipt signing keys: created on first use, sealed at rest, and the
    unsealed private key cached per process (it never changes for a kid)."""

    def __init__(self, keyring: Keyring, clock: Clock) -> None:
        self._keyring = keyring
        self._clock = clock
        self._unsealed: dict[str, Ed25519PrivateKey] = {}
        self._current: tuple[SigningKey, float] | None = None

    async def current(self, conn: AsyncConnection) -> SigningKey:
        """The key new receipts are signed with, creating it if there is none yet."""
        if self._current is not None and time.monotonic() < self._current[1]:
            return self._current[0]
        row = await self._current_row(conn)
        if row is None:
            # Replicas starting together must not each create a key: serialise creation.
            await conn.execute(
                select(func.pg_advisory_xact_lock(func.hashtextextended(_CREATE_KEY_LOCK, 0)))
            )
            row = await self._current_row(conn)
        if row is None:
            # Not remembered: the key exists only once this transaction commits.
            return await self._create(conn)
        key = await self._unseal(conn, row)
        self._current = (key, time.monotonic() + CURRENT_KEY_TTL)
        return key

    async def _unseal(self, conn: AsyncConnection, row: Any) -> SigningKey:
        private_key = self._unsealed.get(row.kid)
        if private_key is None:
            plaintext = await self._keyring.decrypt(
                conn,
                RECEIPT_KEYS_SUBJECT,
                RECEIPT_KEYS_CATEGORY,
                row.kid,
                bytes(row.sealed_private_key),
            )
            if isinstance(plaintext, Erased):
                raise RuntimeError("the receipt signing keys were shredded")
            private_key = Ed25519PrivateKey.from_private_bytes(plaintext)
            self._unsealed[row.kid] = private_key
        return SigningKey(row.kid, private_key)

    async def jwks(self, conn: AsyncConnection) -> dict[str, list[dict[str, Any]]]:
        """Every public key receipts were ever signed with (old receipts must stay verifiable),
        as a JWKS document; creates the first key if there is none yet."""
        await self.current(conn)
        rows = await conn.execute(
            select(receipt_signing_keys.c.public_jwk).order_by(receipt_signing_keys.c.created_at)
        )
        return {"keys": [dict(row.public_jwk) for row in rows]}

    async def _current_row(self, conn: AsyncConnection) -> Any:
        return (
            await conn.execute(
                select(receipt_signing_keys)
                .where(receipt_signing_keys.c.retired_at.is_(None))
                .order_by(receipt_signing_keys.c.created_at.desc())
                .limit(1)
            )
        ).first()

    async def _create(self, conn: AsyncConnection) -> SigningKey:
        private_key = Ed25519PrivateKey.generate()
        kid = f"consent-receipts-{uuid.uuid4().hex[:12]}"
        raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        sealed = await self._keyring.encrypt(
            conn, RECEIPT_KEYS_SUBJECT, RECEIPT_KEYS_CATEGORY, kid, raw
        )
        await conn.execute(
            insert(receipt_signing_keys).values(
                kid=kid,
                public_jwk=cast(dict[str, Any], public_jwk(private_key, kid)),
                sealed_private_key=sealed,
                created_at=self._clock.now(),
            )
        )
        self._unsealed[kid] = private_key
        return SigningKey(kid, private_key)
