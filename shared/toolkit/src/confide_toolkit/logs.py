"""The one logger setup: a JSON line per record on stdout, with trace ids, refusing personal data.

`configure_logging("consent")` at startup; then everywhere
`logger.info("consent granted", extra={"consent_id": ..., "subject_id": ...})`.
Extra fields named like personal data (`email`, `password`, `body`, `card_number`, ...) are
written as "[redacted]", and exceptions are logged by type and stack without their message,
which may quote personal data (a database error echoing a duplicate email, say).
The message text itself is the caller's responsibility: pseudonymous ids only (DESIGN rule 5).

Run uvicorn with `log_config=None, access_log=False`: its access log records client IP
addresses and query strings; the server spans already record each request.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from opentelemetry import trace

REDACTED: Final = "[redacted]"

PERSONAL_FIELD_NAMES: Final = frozenset(
    {
        "email",
        "password",
        "new_password",
        "current_password",
        "name",
        "display_name",
        "full_name",
        "first_name",
        "last_name",
        "cardholder_name",
        "phone",
        "phone_number",
        "address",
        "billing_address",
        "line1",
        "line2",
        "city",
        "postal_code",
        "body",
        "note",
        "text",
        "content",
        "card_number",
        "pan",
        "cvc",
        "cvv",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "secret",
        "totp_secret",
        "totp_code",
        "otpauth_uri",
        "authorization",
        "cookie",
        "ip",
        "client_ip",
        "user_agent",
        "reason",
    }
)
"""Extra field names whose values are never logged."""

# Also refused: any field ending in one of these (`recipient_email`, `client_ip_address`).
_PERSONAL_SUFFIXES: Final = (
    "_email",
    "_password",
    "_phone",
    "_address",
    "_token",
    "_secret",
    "_body",
    "_card_number",
)

# Attributes every LogRecord has; anything else on a record came from `extra`.
_RECORD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
) | {"message", "asctime", "taskName", "trace_id", "span_id", "service"}

_HANDLER_MARK: Final = "_confide_handler"
_MAX_DEPTH = 5


def is_personal_field(name: str) -> bool:
    """Whether a field of that name may hold personal data and must not be logged."""
    lowered = name.lower()
    return lowered in PERSONAL_FIELD_NAMES or lowered.endswith(_PERSONAL_SUFFIXES)


def _redact(value: Any, depth: int = 0) -> Any:
    # Nested mappings are redacted too: `extra={"request": {"email": ...}}`.
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            key: REDACTED if is_personal_field(str(key)) else _redact(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    return value


class PersonalDataFilter(logging.Filter):
    """Replaces extra fields named like personal data with "[redacted]" and stamps the current
    trace and span ids. It sits on the handler, so it sees records of every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in list(record.__dict__.items()):
            if name in _RECORD_ATTRIBUTES:
                continue
            record.__dict__[name] = REDACTED if is_personal_field(name) else _redact(value)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    _, exc, tb = exc_info
    if exc is None:
        return {}
    # Type and stack only: the message may quote personal data.
    return {
        "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "stack": "".join(traceback.format_tb(tb)),
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339 UTC), level, logger, message, service,
    trace_id/span_id inside a span, then the extra fields."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service_name,
        }
        for name in ("trace_id", "span_id"):
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in line:
                line[name] = value
        if record.exc_info:
            line.update(_exception_fields(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(service_name: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record of the process as a JSON line to stdout (or `stream`).

    Calling it again replaces the handler it installed before. Uvicorn's loggers are routed
    here too, with the access log off (it records client IP addresses).
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service_name))
    handler.addFilter(PersonalDataFilter())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, _HANDLER_MARK, False):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())

    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
