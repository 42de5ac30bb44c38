"""Fixtures for the event contract tests: ids, a clock, and a valid sample of every event."""

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from confide_events import billing, consent, identity, messaging, retention
from confide_events.base import IntegrationEvent

NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
SUBJECT = UUID("0195a3c2-1111-7abc-8def-0123456789ab")
OTHER = UUID("0195a3c2-2222-7abc-8def-0123456789ab")
POLICY_HASH = "a" * 64
PUBLIC_KEY_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def uuid7() -> UUID:
    """A fresh UUIDv7 (Python 3.11 has no uuid.uuid7)."""
    unix_ms = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (random_bits >> 62 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= random_bits & ((1 << 62) - 1)
    return UUID(int=value)


def an_id() -> UUID:
    return uuid7()


def sample_events() -> list[IntegrationEvent]:
    """One valid instance of every event class in the catalogue, old versions included."""
    return [
        identity.UserRegistered(subject_id=SUBJECT, role="client", registered_at=NOW),
        identity.AccountClosed(subject_id=SUBJECT, closed_at=NOW),
        identity.PasswordChanged(subject_id=SUBJECT, changed_at=NOW),
        identity.SessionsRevoked(
            subject_id=SUBJECT,
            session_ids=(an_id(), an_id()),
            reason="password_changed",
            revoked_at=NOW,
            tokens_expire_by=NOW + timedelta(minutes=10),
        ),
        identity.AccountLocked(
            subject_id=SUBJECT, locked_at=NOW, locked_until=NOW + timedelta(minutes=15)
        ),
        identity.SigningKeyPublished(
            kid="2026-03-key-1",
            public_jwk=identity.PublicSigningKey(x=PUBLIC_KEY_X, kid="2026-03-key-1"),
            published_at=NOW,
            not_after=NOW + timedelta(days=90),
        ),
        identity.SubjectDataShreddedV1(
            subject_id=SUBJECT, category="identity.profile", key_id=an_id(), shredded_at=NOW
        ),
        identity.SubjectDataShredded(
            subject_id=SUBJECT,
            category="identity.profile",
            outcome="shredded",
            key_id=an_id(),
            answered_at=NOW,
        ),
        consent.ConsentGrantedV1(
            consent_id=an_id(),
            subject_id=SUBJECT,
            purpose="treatment.referral",
            recipient_id=OTHER,
            data_categories=("messaging.session_notes",),
            policy_version="2025-06",
            policy_hash=POLICY_HASH,
            granted_at=NOW,
        ),
        consent.ConsentGranted(
            consent_id=an_id(),
            subject_id=SUBJECT,
            purpose="treatment.referral",
            recipient_id=OTHER,
            data_categories=("messaging.session_notes", "identity.profile"),
            policy_version="2026-01",
            policy_hash=POLICY_HASH,
            method="web_form",
            granted_at=NOW,
        ),
        consent.ConsentRevoked(
            consent_id=an_id(), subject_id=SUBJECT, revoked_at=NOW, reason="subject_withdrew"
        ),
        messaging.ConversationStarted(
            conversation_id=an_id(), subject_id=SUBJECT, therapist_id=OTHER, started_at=NOW
        ),
        messaging.MessageSent(
            message_id=an_id(),
            conversation_id=an_id(),
            subject_id=SUBJECT,
            sender_id=OTHER,
            sender_role="therapist",
            sent_at=NOW,
        ),
        messaging.SessionNoteRecorded(
            note_id=an_id(),
            conversation_id=an_id(),
            subject_id=SUBJECT,
            therapist_id=OTHER,
            recorded_at=NOW,
        ),
        messaging.RecordAccessed(
            subject_id=SUBJECT,
            accessor_id=OTHER,
            accessor_role="therapist",
            category="messaging.session_notes",
            record_id=an_id(),
            accessed_at=NOW,
        ),
        messaging.RecordsDisclosed(
            disclosure_id=an_id(),
            subject_id=SUBJECT,
            recipient_id=OTHER,
            consent_id=an_id(),
            legal_basis=None,
            data_categories=("messaging.session_notes",),
            disclosed_at=NOW,
        ),
        messaging.SubjectDataShreddedV1(
            subject_id=SUBJECT,
            category="messaging.messages",
            key_id=an_id(),
            shredded_at=NOW,
            erasure_case_id=an_id(),
        ),
        messaging.SubjectDataShredded(
            subject_id=SUBJECT,
            category="messaging.session_notes",
            outcome="nothing_held",
            answered_at=NOW,
            erasure_case_id=an_id(),
        ),
        billing.PaymentMethodAdded(
            payment_method_id=an_id(), subject_id=SUBJECT, brand="visa", added_at=NOW
        ),
        billing.PaymentMethodRemoved(payment_method_id=an_id(), subject_id=SUBJECT, removed_at=NOW),
        billing.ChargeSucceeded(
            charge_id=an_id(),
            subject_id=SUBJECT,
            payment_method_id=an_id(),
            amount_cents=8000,
            currency="EUR",
            succeeded_at=NOW,
        ),
        billing.ChargeFailed(
            charge_id=an_id(),
            subject_id=SUBJECT,
            payment_method_id=an_id(),
            amount_cents=8000,
            currency="EUR",
            failure_code="insufficient_funds",
            failed_at=NOW,
        ),
        billing.RefundIssued(
            refund_id=an_id(),
            charge_id=an_id(),
            subject_id=SUBJECT,
            amount_cents=4000,
            currency="EUR",
            reason="session_cancelled",
            issued_at=NOW,
        ),
        billing.SubjectDataShreddedV1(
            subject_id=SUBJECT,
            category="billing.payment_methods",
            key_id=an_id(),
            shredded_at=NOW,
        ),
        billing.SubjectDataShredded(
            subject_id=SUBJECT,
            category="billing.payment_methods",
            outcome="shredded",
            key_id=an_id(),
            answered_at=NOW,
        ),
        retention.ErasureRequested(
            erasure_case_id=an_id(),
            subject_id=SUBJECT,
            origin="subject_request",
            data_categories=("identity.profile", "messaging.messages"),
            requested_at=NOW,
        ),
        retention.LegalHoldPlaced(
            legal_hold_id=an_id(),
            subject_id=SUBJECT,
            reason="litigation",
            placed_by=OTHER,
            placed_at=NOW,
        ),
        retention.LegalHoldReleased(
            legal_hold_id=an_id(), subject_id=SUBJECT, released_by=OTHER, released_at=NOW
        ),
        retention.RetentionExpired(
            subject_id=SUBJECT,
            category="messaging.messages",
            policy="messaging.messages.after_account_closed",
            due_at=NOW,
        ),
        retention.ErasureCompleted(
            erasure_case_id=an_id(),
            subject_id=SUBJECT,
            certificate_id=an_id(),
            outcomes=(
                retention.CategoryOutcome(
                    category="identity.profile",
                    outcome="shredded",
                    key_id=an_id(),
                    shredded_at=NOW,
                ),
                retention.CategoryOutcome(
                    category="billing.financial_records",
                    outcome="retained",
                    retained_until=NOW + timedelta(days=7 * 365),
                    retained_on="legal_obligation",
                ),
                retention.CategoryOutcome(category="messaging.messages", outcome="nothing_held"),
            ),
            backups_clear_from=NOW + timedelta(days=35),
            completed_at=NOW,
        ),
    ]


@pytest.fixture
def new_event_id() -> Callable[[], UUID]:
    return uuid7


@pytest.fixture
def correlation_id() -> str:
    return str(uuid7())


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def subject_id() -> UUID:
    return SUBJECT


@pytest.fixture
def samples() -> list[IntegrationEvent]:
    return sample_events()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `sample_event` runs a test once per event class of the catalogue.
    if "sample_event" in metafunc.fixturenames:
        events = sample_events()
        metafunc.parametrize(
            "sample_event",
            events,
            ids=[f"{event.event_type}.v{event.schema_version}" for event in events],
        )
    # `produced_event` runs a test once per event class a service may produce
    # (the latest version of each type).
    if "produced_event" in metafunc.fixturenames:
        from confide_events import REGISTRY

        produced = [
            event
            for event in sample_events()
            if event.schema_version == REGISTRY.latest_version(event.event_type)
        ]
        metafunc.parametrize(
            "produced_event", produced, ids=[event.event_type for event in produced]
        )
