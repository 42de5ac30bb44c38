"""The shape shared by the three `SubjectDataShredded` events: an owner's answer to an expiry.

Identity, messaging and billing each own personal data. Retention emits `RetentionExpired`
for a (person, category); the service that owns the category answers every one of them with
its own `SubjectDataShredded` (its own CloudEvents type, e.g.
`confide.messaging.SubjectDataShredded`, narrowing `category` to the categories it owns):
`outcome` says whether it destroyed the person's key (`shredded`, naming the `key_id`) or
never held data for them (`nothing_held`, no key). Consumers that react to every answer test
`isinstance(event, SubjectDataShredded)`.

Why a second version of this event rather than a separate acknowledgement: retention counts
one answer per expiry and owner. With one event that always answers, it consumes one type per
owner and copies `outcome` and `key_id` straight into the erasure certificate's
`retention.CategoryOutcome` (whose codes these are); a separate acknowledgement would leave it
two kinds of answer to join, and an owner two events to keep consistent for one shredding.

Version 1 required `key_id`, so an owner that never held data could not answer. It is kept
frozen (`SubjectDataShreddedV1` and the per-producer `...V1` classes) and read as version 2
through `upcast_subject_data_shredded_v1`: every version 1 event was a shredding.
"""

from typing import Any, Literal, Self
from uuid import UUID

from pydantic import model_validator

from confide_events.base import IntegrationEvent
from confide_events.vocabulary import DataCategory, UtcDateTime

ShreddingOutcome = Literal["shredded", "nothing_held"]
"""An owner's answer to an expiry: it destroyed the person's key, or held no data for them.
(The same codes as `retention.CategoryOutcomeCode`, which adds retention's own `retained`.)"""


class SubjectDataShredded(IntegrationEvent):
    """An owner answered a `RetentionExpired` for one category of a person's data.

    `shredded`: the person's data key for the category was destroyed (`key_id`), that data is
    erased for good. `nothing_held`: the owner never held data of that category for the person
    (no `key_id`); nothing is left to erase. `answered_at` is when the key was destroyed, or
    when the owner found there was none.

    Abstract: publish one of the per-producer subclasses.
    """

    subject_id: UUID
    category: DataCategory
    outcome: ShreddingOutcome
    key_id: UUID | None = None
    answered_at: UtcDateTime
    erasure_case_id: UUID | None = None

    @model_validator(mode="after")
    def _a_shredding_names_its_key(self) -> Self:
        if (self.outcome == "shredded") != (self.key_id is not None):
            raise ValueError("key_id is set exactly when the outcome is shredded")
        return self


class SubjectDataShreddedV1(IntegrationEvent):
    """Version 1, frozen: do not edit; read through `upcast_subject_data_shredded_v1`.

    A person's data key for one category was destroyed. Abstract, like version 2.
    """

    subject_id: UUID
    category: DataCategory
    key_id: UUID
    shredded_at: UtcDateTime
    erasure_case_id: UUID | None = None


def upcast_subject_data_shredded_v1(data: dict[str, Any]) -> dict[str, Any]:
    """SubjectDataShredded v1 -> v2 (any producer): every v1 event reported a destroyed key."""
    upcast = {name: value for name, value in data.items() if name != "shredded_at"}
    return {**upcast, "outcome": "shredded", "answered_at": data["shredded_at"]}
