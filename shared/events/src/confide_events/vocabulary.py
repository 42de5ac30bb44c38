"""The shared vocabulary of events: data categories, time, and constrained codes.

Every string an event may carry is either an id (UUID), a time, an enumerated code
or a short pattern-constrained token: nothing in these types can hold a name, an
email address or free text. `tests/test_no_personal_data.py` enforces it.
"""

from datetime import UTC, datetime
from typing import Annotated, Final, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, StringConstraints

DataCategory = Literal[
    "identity.profile",
    "messaging.messages",
    "messaging.session_notes",
    "billing.payment_methods",
    "billing.financial_records",
]
"""A category of personal data, each kept under its own per-person data key."""

DATA_CATEGORIES: Final[tuple[DataCategory, ...]] = get_args(DataCategory)

IdentityCategory = Literal["identity.profile"]
MessagingCategory = Literal["messaging.messages", "messaging.session_notes"]
BillingCategory = Literal["billing.payment_methods", "billing.financial_records"]


def _to_utc(moment: datetime) -> datetime:
    # Aware times in any offset are accepted and normalised, so that equal
    # instants compare and serialise equal ("...Z") everywhere.
    return moment.astimezone(UTC)


UtcDateTime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC. Naive datetimes are refused."""

PolicyCode = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=64)
]
"""A dotted lowercase code naming a purpose or a policy, e.g. `treatment.referral`."""

VersionCode = Annotated[
    str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z._-]*$", max_length=32)
]
"""A version label such as `2026-01` or `3.2`."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$", max_length=64)]
"""A SHA-256 digest in lowercase hexadecimal."""

CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$", max_length=3)]
"""An ISO 4217 alphabetic currency code, e.g. `EUR`."""

KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$", max_length=64)]
"""The `kid` of a signing key: a short URL-safe token."""
