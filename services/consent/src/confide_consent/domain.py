"""The consent ledger: one aggregate per person, rebuilt from the stream of its events.

A person's ledger holds every consent they ever gave, each valid from `granted_at` until it is
revoked (by the person, or when their account closes). Consents are never edited: granting
again is a new consent, and a revoked consent stays in the ledger as history. The invariants
live here, with no I/O: a purpose that is never allowed, a policy text the person did not see,
a recipient the purpose does not take, categories the purpose does not cover, and any grant
after the account closed are refused before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from confide_events.consent import CollectionMethod, RevocationReason
from confide_events.vocabulary import DataCategory
from confide_toolkit.consents import ConsentRecord
from confide_toolkit.domain_events import DomainEvent
from pydantic import TypeAdapter

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
from confide_consent.purposes import NEVER_ALLOWED, PURPOSES, Purpose

STREAM_TYPE = "consent_ledger"

# --- the ledger's events ---------------------------------------------------------------------


class ConsentGranted(DomainEvent):
    """The person consented; valid from `granted_at`."""

    stream_type = STREAM_TYPE
    event_type = "ConsentGranted"
    schema_version = 1
    consent_id: UUID
    purpose: str
    recipient_id: UUID | None
    data_categories: tuple[DataCategory, ...]
    policy_version: str
    policy_hash: str
    method: CollectionMethod
    granted_at: datetime


class ReceiptIssued(DomainEvent):
    """The signed receipt of a grant (a compact JWS), kept with the ledger so it is replayable."""

    stream_type = STREAM_TYPE
    event_type = "ReceiptIssued"
    schema_version = 1
    consent_id: UUID
    receipt_id: UUID
    kid: str
    jws: str
    issued_at: datetime


class ConsentRevoked(DomainEvent):
    """The consent ends at `revoked_at`: nothing may rely on it from then on."""

    stream_type = STREAM_TYPE
    event_type = "ConsentRevoked"
    schema_version = 1
    consent_id: UUID
    revoked_at: datetime
    reason: RevocationReason


class LedgerClosed(DomainEvent):
    """The person's account closed: every consent was withdrawn, and no new one is recorded."""

    stream_type = STREAM_TYPE
    event_type = "LedgerClosed"
    schema_version = 1
    closed_at: datetime


LEDGER_EVENTS: tuple[type[DomainEvent], ...] = (
    ConsentGranted,
    ReceiptIssued,
    ConsentRevoked,
    LedgerClosed,
)


# --- the aggregate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """A registered third party that may receive data, for the purposes it is registered for."""

    recipient_id: UUID
    name: str
    kind: str
    purposes: tuple[str, ...]


@dataclass(frozen=True)
class Receipt:
    receipt_id: UUID
    kid: str
    jws: str
    issued_at: datetime


@dataclass(frozen=True, kw_only=True)
class Consent(ConsentRecord):
    """One consent as the ledger knows it now: its terms and validity interval (what every
    read model of consents shares, `valid_at` included), how it was collected, and its receipt.

    A value: revoking records a new `Consent` in the ledger, so read the ledger again for the
    consent after a command."""

    method: CollectionMethod
    receipt: Receipt | None = None

    @property
    def status(self) -> Literal["active", "revoked"]:
        """Whether the consent is in force now (`active`) or ended (`revoked`)."""
        return "active" if self.revoked_at is None else "revoked"


RecipientKind = Literal["healthcare_provider", "research_institution"]


def new_recipient(
    recipient_id: UUID, name: str, kind: RecipientKind, purposes: Sequence[str]
) -> Recipient:
    """A third party to register: only for purposes that send data to a named recipient (and
    never for a purpose that is never allowed)."""
    codes = tuple(dict.fromkeys(purposes))
    refused = [
        code for code in codes if code not in PURPOSES or not PURPOSES[code].requires_recipient
    ]
    if not codes or refused:
        raise PurposeTakesNoRecipient(refused)
    return Recipient(recipient_id, name, kind, codes)


def resolve_purpose(code: str) -> Purpose:
    """The purpose named `code`; refuses the purposes that are never allowed, by name."""
    reason = NEVER_ALLOWED.get(code)
    if reason is not None:
        raise PurposeNeverAllowed(code, reason)
    purpose = PURPOSES.get(code)
    if purpose is None:
        raise UnknownPurpose(code)
    return purpose


_SNAPSHOT_FIELDS = (
    "consent_id",
    "purpose",
    "recipient_id",
    "data_categories",
    "policy_version",
    "policy_hash",
    "method",
    "granted_at",
    "revoked_at",
    "revoke_reason",
)
_SNAPSHOT_ROWS = TypeAdapter(
    list[
        tuple[
            UUID,
            str,
            UUID | None,
            tuple[DataCategory, ...],
            str,
            str,
            CollectionMethod,
            datetime,
            datetime | None,
            RevocationReason | None,
            UUID | None,  # the receipt's id
        ]
    ]
)
"""A snapshot's consents: one array each, `_SNAPSHOT_FIELDS` then the receipt's id. Arrays,
not objects, and without the person's id (the stream's): a grant parses the whole snapshot,
and as objects it was twice as long."""
_CLOSED_AT = TypeAdapter(datetime | None)


@dataclass
class ConsentLedger:
    """A person's consents. Commands check the invariants, then record and apply new events;
    `pending` holds what is to be appended after `version`. `snapshot_version` is the version
    of the snapshot the ledger was restored from (0 when replayed from the first event).

    The ledger remembers which receipt each consent got, not the signed receipt itself: no
    command needs the JWS again (reads come from the `consents` projection), and leaving it
    out keeps snapshots small. The consents of a snapshot are decoded on first use: granting,
    the command people run most, needs none of them, nor their receipts."""

    subject_id: UUID
    version: int = 0
    closed_at: datetime | None = None
    pending: list[DomainEvent] = field(default_factory=list)
    snapshot_version: int = 0
    _consents: dict[UUID, Consent] = field(default_factory=dict, repr=False)
    _receipt_ids: dict[UUID, UUID] = field(default_factory=dict, repr=False)
    _snapshot_rows: list[Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def replay(
        cls,
        subject_id: UUID,
        events: Iterable[DomainEvent],
        version: int,
        *,
        snapshot: tuple[int, dict[str, Any]] | None = None,
    ) -> ConsentLedger:
        """The ledger as its recorded events left it, at stream `version`: from its first
        event, or from `snapshot` (version, state) and the events recorded after it."""
        ledger = cls(subject_id, version)
        if snapshot is not None:
            version_at, state = snapshot
            ledger.snapshot_version = version_at
            ledger._snapshot_rows = state["consents"]
            ledger.closed_at = _CLOSED_AT.validate_python(state["closed_at"])
        for event in events:
            ledger._apply(event)
        return ledger

    @property
    def consents(self) -> dict[UUID, Consent]:
        """Every consent in the ledger, by id."""
        self._restore_snapshot()
        return self._consents

    @property
    def receipt_ids(self) -> dict[UUID, UUID]:
        """The id of each consent's receipt, by consent id (consents without one are absent)."""
        self._restore_snapshot()
        return self._receipt_ids

    def snapshot_state(self) -> dict[str, Any]:
        """The ledger's state as JSON, to be saved as the snapshot at `version`."""
        receipts = self.receipt_ids
        rows = [
            (*(getattr(c, name) for name in _SNAPSHOT_FIELDS), receipts.get(c.consent_id))
            for c in self.consents.values()
        ]
        return {
            "consents": _SNAPSHOT_ROWS.dump_python(rows, mode="json"),
            "closed_at": _CLOSED_AT.dump_python(self.closed_at, mode="json"),
        }

    def _restore_snapshot(self) -> None:
        """Decode the snapshot's consents and their receipts' ids, on first use only."""
        if self._snapshot_rows is None:
            return
        consents: dict[UUID, Consent] = {}
        receipts: dict[UUID, UUID] = {}
        for row in _SNAPSHOT_ROWS.validate_python(self._snapshot_rows):
            consent_id, purpose, recipient, categories, version, policy_hash = row[:6]
            method, granted_at, revoked_at, reason, receipt_id = row[6:]
            consents[consent_id] = Consent(
                consent_id=consent_id,
                subject_id=self.subject_id,
                purpose=purpose,
                recipient_id=recipient,
                data_categories=categories,
                policy_version=version,
                policy_hash=policy_hash,
                method=method,
                granted_at=granted_at,
                revoked_at=revoked_at,
                revoke_reason=reason,
            )
            if receipt_id is not None:
                receipts[consent_id] = receipt_id
        # What was recorded after the snapshot is newer than what it holds.
        self._consents = consents | self._consents
        self._receipt_ids = receipts | self._receipt_ids
        self._snapshot_rows = None

    # -- commands ---------------------------------------------------------------------------

    def grant(
        self,
        *,
        consent_id: UUID,
        purpose: Purpose,
        recipient_id: UUID | None,
        recipient: Recipient | None,
        data_categories: Sequence[DataCategory],
        policy_version: str,
        policy_hash: str | None,
        method: CollectionMethod,
        now: datetime,
    ) -> Consent:
        """Record a new consent. `recipient` is the registered record of `recipient_id` (None
        when there is none); `policy_hash`, when given, must be the hash of the text shown."""
        if self.closed_at is not None:
            raise AccountIsClosed(self.subject_id)
        if purpose.requires_recipient and recipient_id is None:
            raise RecipientRequired(purpose.code)
        if not purpose.requires_recipient and recipient_id is not None:
            raise RecipientNotApplicable(purpose.code)
        if recipient_id is not None:
            if recipient is None:
                raise UnknownRecipient(recipient_id)
            if purpose.code not in recipient.purposes:
                raise RecipientNotRegisteredForPurpose(recipient_id, purpose.code)
        categories = tuple(dict.fromkeys(data_categories))
        uncovered = [c for c in categories if c not in purpose.data_categories]
        if not categories or uncovered:
            raise CategoriesNotCovered(purpose.code, uncovered)
        policy = purpose.policy(policy_version)
        if policy is None:
            raise UnknownPolicyVersion(purpose.code, policy_version)
        if policy != purpose.current_policy:
            raise StalePolicyVersion(purpose.code, policy_version, purpose.current_policy.version)
        if policy_hash is not None and policy_hash != policy.hash:
            raise PolicyHashMismatch(purpose.code, policy_version)
        self._record(
            ConsentGranted(
                consent_id=consent_id,
                purpose=purpose.code,
                recipient_id=recipient_id,
                data_categories=categories,
                policy_version=policy.version,
                policy_hash=policy.hash,
                method=method,
                granted_at=now,
            )
        )
        return self._consents[consent_id]

    def issue_receipt(self, consent_id: UUID, receipt: Receipt) -> Consent:
        """Record the signed receipt of a grant (once: a receipt is never replaced); returns
        the consent with its receipt, as the grant answers it."""
        consent = self.consent(consent_id)
        # `consent` restored the snapshot's receipts if the consent is the snapshot's; one
        # granted since has its receipt, if any, among those recorded since.
        if consent_id in self._receipt_ids:
            raise ValueError(f"consent {consent_id} already has a receipt")
        self._record(
            ReceiptIssued(
                consent_id=consent_id,
                receipt_id=receipt.receipt_id,
                kid=receipt.kid,
                jws=receipt.jws,
                issued_at=receipt.issued_at,
            )
        )
        return replace(consent, receipt=receipt)

    def revoke(self, consent_id: UUID, now: datetime) -> bool:
        """The person withdraws a consent, effective `now`. False (and nothing recorded) when
        it was already revoked: withdrawing twice is not an error."""
        consent = self.consent(consent_id)
        if consent.revoked_at is not None:
            return False
        self._record(
            ConsentRevoked(consent_id=consent_id, revoked_at=now, reason="subject_withdrew")
        )
        return True

    def close(self, closed_at: datetime) -> list[Consent]:
        """The account closed: withdraw every active consent (reason `account_closed`) and
        refuse new ones. Returns the consents withdrawn; closing again withdraws nothing."""
        if self.closed_at is not None:
            return []
        active = [c.consent_id for c in self.consents.values() if c.revoked_at is None]
        for consent_id in active:
            # A grant that raced the closing ends the moment it began: never valid, and its
            # interval still well-formed.
            revoked_at = max(closed_at, self._consents[consent_id].granted_at)
            self._record(
                ConsentRevoked(
                    consent_id=consent_id, revoked_at=revoked_at, reason="account_closed"
                )
            )
        self._record(LedgerClosed(closed_at=closed_at))
        return [self._consents[consent_id] for consent_id in active]

    # -- queries ----------------------------------------------------------------------------

    def consent(self, consent_id: UUID) -> Consent:
        found = self._consents.get(consent_id) or self.consents.get(consent_id)
        if found is None:
            raise ConsentNotFound(consent_id)
        return found

    # -- applying events --------------------------------------------------------------------

    def _record(self, event: DomainEvent) -> None:
        self._apply(event)
        self.pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, ConsentGranted):
            self._consents[event.consent_id] = Consent(
                consent_id=event.consent_id,
                subject_id=self.subject_id,
                purpose=event.purpose,
                recipient_id=event.recipient_id,
                data_categories=event.data_categories,
                policy_version=event.policy_version,
                policy_hash=event.policy_hash,
                method=event.method,
                granted_at=event.granted_at,
            )
        elif isinstance(event, ReceiptIssued):
            self._receipt_ids[event.consent_id] = event.receipt_id
        elif isinstance(event, ConsentRevoked):
            self._consents[event.consent_id] = replace(
                self.consents[event.consent_id],
                revoked_at=event.revoked_at,
                revoke_reason=event.reason,
            )
        elif isinstance(event, LedgerClosed):
            self.closed_at = event.closed_at
        else:
            raise TypeError(f"{type(event).__name__} is not a consent ledger event")
