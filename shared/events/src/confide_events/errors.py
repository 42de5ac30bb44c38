"""The errors a consumer can meet when it reads an event.

They all derive from `EventDecodeError` (a `ValueError`), so a consumer can send
any record it cannot read to the dead-letter topic with one `except` clause.
Their messages name fields and rules, never the offending values: a malformed
record could carry personal data, and exceptions end up in logs.
"""


class EventDecodeError(ValueError):
    """A record or event that cannot be read under this contract."""


class MalformedEnvelope(EventDecodeError):
    """The bytes are not a valid Confide CloudEvents envelope."""


class UnknownEventType(EventDecodeError):
    """The envelope names an event type (or a schema version) this contract does not know."""


class MalformedEventData(EventDecodeError):
    """The envelope is valid but its `data` does not match the event's schema."""


class MissingUpcaster(LookupError):
    """No upcaster turns an event's data from one schema version into the next."""
