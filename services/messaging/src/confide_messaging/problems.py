"""How the messaging service's refusals answer over HTTP: one `ProblemType` per domain
exception, passed by app.py to `Service.create_app`.

Each answer's type URI ends in the kebab-cased class name unless a slug is given, and its
detail is the exception's message (pseudonymous ids only). A 422 names the refused request
field as request validation does (`body.therapist_id`), from the exception's `field`. A
conversation or a client's records that the caller may not see answer 404, exactly as those
that do not exist.
"""

from __future__ import annotations

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_messaging.domain import (
    ClientNotAvailable,
    ClientNotFound,
    ConsentRequired,
    ConversationClosed,
    ConversationNotFound,
    DownloadNotAvailable,
    IdempotencyKeyReused,
    NotHeldHere,
    RecordsErased,
    TherapistNotAvailable,
)

_NOT_FOUND = ProblemType(404, "Not Found")
_REFUSED_FIELD = ProblemType(422, "Unprocessable Content")

PROBLEM_TYPES: ProblemTypes = {
    ConversationNotFound: _NOT_FOUND,
    ClientNotFound: _NOT_FOUND,
    DownloadNotAvailable: _NOT_FOUND,
    # The body names a therapist there is none of (or none with an open account): 404 naming
    # `body.therapist_id`, as Stripe answers a body's reference to nothing.
    TherapistNotAvailable: _NOT_FOUND,
    ConversationClosed: ProblemType(409, "Conversation closed", slug="conversation-closed"),
    ClientNotAvailable: ProblemType(409, "Conflict", slug="account-not-open"),
    RecordsErased: ProblemType(409, "Conflict", slug="records-erased"),
    ConsentRequired: ProblemType(403, "Consent required", slug="consent-required"),
    NotHeldHere: _REFUSED_FIELD,
    IdempotencyKeyReused: ProblemType(422, "Unprocessable Content", location="header"),
}
"""Every `MessagingError` the service raises, and how it answers."""
