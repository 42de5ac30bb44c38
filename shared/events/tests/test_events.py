from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from confide_events import (
    CATALOGUE,
    DATA_CATEGORIES,
    IntegrationEvent,
    MalformedEventData,
    SubjectDataShredded,
    billing,
    consent,
    identity,
    messaging,
    retention,
)
from pydantic import ValidationError


def _fields(event: IntegrationEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in type(event).model_fields}


def test_every_event_survives_its_json_form(sample_event: IntegrationEvent) -> None:
    data = sample_event.to_data()

    assert type(sample_event).from_data(data) == sample_event


def test_every_event_refuses_an_unknown_field(sample_event: IntegrationEvent) -> None:
    with pytest.raises(ValidationError, match="extra"):
        type(sample_event).model_validate({**_fields(sample_event), "display_name": "Jane"})


def test_every_event_is_immutable(sample_event: IntegrationEvent) -> None:
    first_field = next(iter(type(sample_event).model_fields))

    with pytest.raises(ValidationError, match="frozen"):
        setattr(sample_event, first_field, None)


def test_every_event_has_a_pseudonymous_subject(sample_event: IntegrationEvent) -> None:
    assert sample_event.subject()
    assert " " not in sample_event.subject()


def test_every_time_field_refuses_a_naive_datetime(sample_event: IntegrationEvent) -> None:
    fields = _fields(sample_event)
    time_fields = [name for name, value in fields.items() if isinstance(value, datetime)]
    assert time_fields
    for name in time_fields:
        with pytest.raises(ValidationError, match=name):
            type(sample_event)(**{**fields, name: datetime(2026, 3, 14, 9, 0)})


def test_event_times_are_normalised_to_utc(subject_id: UUID) -> None:
    paris = timezone(timedelta(hours=1))
    event = identity.AccountClosed(
        subject_id=subject_id, closed_at=datetime(2026, 3, 14, 10, 0, tzinfo=paris)
    )

    assert event.closed_at == datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    assert event.to_data()["closed_at"] == "2026-03-14T09:00:00Z"


def test_strict_mode_refuses_a_string_for_a_uuid_in_python(now: datetime) -> None:
    with pytest.raises(ValidationError, match="subject_id"):
        identity.AccountClosed(subject_id="0195a3c2-1111-7abc-8def-0123456789ab", closed_at=now)  # type: ignore[arg-type]


def test_from_data_reads_uuids_and_times_from_json_but_stays_strict(
    subject_id: UUID, now: datetime
) -> None:
    data = {
        "charge_id": "0195a3c2-3333-7abc-8def-0123456789ab",
        "subject_id": str(subject_id),
        "payment_method_id": "0195a3c2-4444-7abc-8def-0123456789ab",
        "amount_cents": 8000,
        "currency": "EUR",
        "succeeded_at": "2026-03-14T09:26:53.589Z",
    }

    event = billing.ChargeSucceeded.from_data(data)

    assert event.subject_id == subject_id
    assert event.succeeded_at == now
    with pytest.raises(MalformedEventData, match="amount_cents"):
        billing.ChargeSucceeded.from_data({**data, "amount_cents": "8000"})


def test_from_data_errors_name_the_field_but_not_the_value(subject_id: UUID) -> None:
    data = {"subject_id": str(subject_id), "closed_at": "jane@example.com"}

    with pytest.raises(MalformedEventData, match="closed_at") as caught:
        identity.AccountClosed.from_data(data)

    assert "jane" not in str(caught.value)


def test_signing_key_is_keyed_by_its_kid(samples: list[IntegrationEvent]) -> None:
    published = next(e for e in samples if isinstance(e, identity.SigningKeyPublished))

    assert published.subject() == published.kid
    assert published.to_data()["public_jwk"]["kty"] == "OKP"


def test_signing_key_jwk_must_name_the_same_key(now: datetime) -> None:
    jwk = identity.PublicSigningKey(x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid="key-2")

    with pytest.raises(ValidationError, match="kid"):
        identity.SigningKeyPublished(kid="key-1", public_jwk=jwk, published_at=now)


def test_signing_key_refuses_a_private_key_member() -> None:
    with pytest.raises(ValidationError, match="extra"):
        identity.PublicSigningKey.model_validate(
            {"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "k", "d": "secret"}
        )


def test_disclosure_cites_exactly_one_justification(subject_id: UUID, now: datetime) -> None:
    base: dict[str, Any] = {
        "disclosure_id": subject_id,
        "subject_id": subject_id,
        "recipient_id": subject_id,
        "data_categories": ("messaging.session_notes",),
        "disclosed_at": now,
    }

    with pytest.raises(ValidationError, match="exactly one"):
        messaging.RecordsDisclosed(**base, consent_id=None, legal_basis=None)
    with pytest.raises(ValidationError, match="exactly one"):
        messaging.RecordsDisclosed(**base, consent_id=subject_id, legal_basis="court_order")
    assert messaging.RecordsDisclosed(**base, consent_id=None, legal_basis="court_order")


def test_each_producer_shreds_only_its_own_categories(subject_id: UUID, now: datetime) -> None:
    fields: dict[str, Any] = {
        "subject_id": subject_id,
        "outcome": "shredded",
        "key_id": subject_id,
        "answered_at": now,
    }

    with pytest.raises(ValidationError, match="category"):
        identity.SubjectDataShredded(**fields, category="messaging.messages")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="category"):
        billing.SubjectDataShredded(**fields, category="identity.profile")  # type: ignore[arg-type]
    shredded = messaging.SubjectDataShredded(**fields, category="messaging.session_notes")
    assert isinstance(shredded, SubjectDataShredded)


def test_shredding_events_have_a_type_per_producer() -> None:
    shredding_types = {cls.event_type for cls in CATALOGUE if issubclass(cls, SubjectDataShredded)}

    assert shredding_types == {
        "confide.identity.SubjectDataShredded",
        "confide.messaging.SubjectDataShredded",
        "confide.billing.SubjectDataShredded",
    }


def test_a_shredding_names_its_key_and_nothing_held_names_none(
    subject_id: UUID, now: datetime
) -> None:
    fields: dict[str, Any] = {
        "subject_id": subject_id,
        "category": "identity.profile",
        "answered_at": now,
    }

    with pytest.raises(ValidationError, match="key_id"):
        identity.SubjectDataShredded(**fields, outcome="shredded")
    with pytest.raises(ValidationError, match="key_id"):
        identity.SubjectDataShredded(**fields, outcome="nothing_held", key_id=subject_id)
    answer = identity.SubjectDataShredded(**fields, outcome="nothing_held")
    assert answer.key_id is None


def test_an_erasure_outcome_explains_itself(now: datetime) -> None:
    with pytest.raises(ValidationError, match="key_id"):
        retention.CategoryOutcome(category="identity.profile", outcome="shredded")
    with pytest.raises(ValidationError, match="retained_until"):
        retention.CategoryOutcome(category="billing.financial_records", outcome="retained")


def test_amounts_are_positive_and_currencies_are_iso_codes(
    samples: list[IntegrationEvent],
) -> None:
    charge = next(e for e in samples if isinstance(e, billing.ChargeSucceeded))

    with pytest.raises(ValidationError, match="amount_cents"):
        charge.model_validate({**_fields(charge), "amount_cents": 0})
    with pytest.raises(ValidationError, match="currency"):
        charge.model_validate({**_fields(charge), "currency": "euro"})


def test_consent_needs_at_least_one_category(samples: list[IntegrationEvent]) -> None:
    granted = next(e for e in samples if isinstance(e, consent.ConsentGranted))

    with pytest.raises(ValidationError, match="data_categories"):
        granted.model_validate({**_fields(granted), "data_categories": ()})


def test_data_categories_are_the_five_of_the_design() -> None:
    assert DATA_CATEGORIES == (
        "identity.profile",
        "messaging.messages",
        "messaging.session_notes",
        "billing.payment_methods",
        "billing.financial_records",
    )
