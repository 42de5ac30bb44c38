"""The shape shared by the three `SubjectDataShredded` events.

Identity, messaging and billing each own personal data and each announce the
destruction of a person's data key for one of their categories. The fact is the
same, so the fields are defined once here; each producer module declares its own
event (its own CloudEvents type, e.g. `confide.messaging.SubjectDataShredded`)
narrowing `category` to the categories that service owns. Consumers that react
to every shredding can test `isinstance(event, SubjectDataShredded)`.
"""

from uuid import UUID

from confide_events.base import IntegrationEvent
from confide_events.vocabulary import DataCategory, UtcDateTime


class SubjectDataShredded(IntegrationEvent):
    """A person's data key for one category was destroyed: that data is erased for good.

    Abstract: publish one of the per-producer subclasses.
    """

    subject_id: UUID
    category: DataCategory
    key_id: UUID
    shredded_at: UtcDateTime
    erasure_case_id: UUID | None = None
