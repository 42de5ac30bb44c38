"""RFC 9457 `application/problem+json`: the one error format of every Confide API.

Routers raise a `Problem` (or a subclass such as `NotFound`) for what is HTTP's own business
(a missing resource, a refused role); the domain and the handlers raise their own exceptions,
which know nothing of HTTP and answer as each service declares once, in its `problems.py`, with
a `ProblemType` per exception. This module turns each into a problem document. Framework
errors (unknown route, wrong method, validation, malformed JSON) and unexpected exceptions get
the same format.

Error bodies never carry personal data (DESIGN rule 5): validation errors name the field but
never echo the value, and an unexpected exception answers a generic 500 whose text stays out
of the body, the logs and the traces.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any, Final, TypedDict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

PROBLEM_JSON: Final = "application/problem+json"
"""The media type of every error body."""

PROBLEM_TYPE_BASE: Final = "https://confide.dev/problems/"
"""Problem type URIs are this base followed by a slug, e.g. `.../not-found`."""

REDACTED: Final = "[redacted]"

# Members the RFC defines; extensions may not overwrite them.
_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})

# RFC 9110 names where Python's http.HTTPStatus still uses the older ones.
_TITLE_OVERRIDES: Final[Mapping[int, str]] = {
    413: "Content Too Large",
    422: "Unprocessable Content",
}


def problem_type(slug: str) -> str:
    """The type URI of a problem slug: `problem_type("not-found")` → `https://confide.dev/problems/not-found`."""
    return PROBLEM_TYPE_BASE + slug


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "error"


def _kebab_case(class_name: str) -> str:
    # StalePolicyVersion → stale-policy-version
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", class_name).lower()


def status_title(status: int) -> str:
    """The standard title of an HTTP status code (RFC 9110 wording)."""
    if status in _TITLE_OVERRIDES:
        return _TITLE_OVERRIDES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class FieldError(TypedDict):
    """One entry of the `errors` member of a 422: which field, what is wrong, the error kind."""

    field: str
    message: str
    type: str


class Problem(Exception):
    """An error answered as `application/problem+json`.

    Subclass it (setting `status`, and optionally `title` and `slug`) or use it directly:
    `Problem("Policy version 3 is no longer current.", status=409, slug="stale-policy-version",
    title="Stale policy version")`. `detail` and `extensions` end up in the response body, so
    they must carry pseudonymous ids only, never personal data.
    """

    status: int = 500
    title: str = ""  # empty: the standard phrase of the status
    slug: str = ""  # empty: derived from the title

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        title: str | None = None,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status if status is not None else type(self).status
        self.title = title or type(self).title or status_title(self.status)
        self.slug = slug or type(self).slug or _slugify(self.title)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extensions: dict[str, Any] = dict(extensions or {})
        clashing = _STANDARD_MEMBERS & self.extensions.keys()
        if clashing:
            raise ValueError(f"extension members may not redefine {sorted(clashing)}")
        super().__init__(detail or self.title)

    @property
    def type_uri(self) -> str:
        """The problem type URI, `https://confide.dev/problems/<slug>`."""
        return problem_type(self.slug)

    def to_dict(self) -> dict[str, Any]:
        """The problem document (without the trace id, which the response adds)."""
        document: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            document["detail"] = self.detail
        document.update(self.extensions)
        return document


class BadRequest(Problem):
    status = 400


class Unauthorized(Problem):
    """401 with `WWW-Authenticate: Bearer` (RFC 6750); `bearer_error` adds e.g. `invalid_token`."""

    status = 401

    def __init__(
        self,
        detail: str | None = None,
        *,
        bearer_error: str | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        challenge = "Bearer" if bearer_error is None else f'Bearer error="{bearer_error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge}, extensions=extensions)


class PaymentRequired(Problem):
    status = 402


class Forbidden(Problem):
    status = 403


class NotFound(Problem):
    status = 404


class Conflict(Problem):
    status = 409


class ContentTooLarge(Problem):
    status = 413


class UnprocessableContent(Problem):
    """422 for input that is well-formed but refused by the domain (a weak password, a purpose
    that is never allowed); `errors` names the fields the same way validation errors do."""

    status = 422

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] | None = None,
        slug: str | None = None,
        title: str | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        members = dict(extensions or {})
        if errors is not None:
            members["errors"] = [dict(error) for error in errors]
        super().__init__(detail, slug=slug, title=title, extensions=members)


def _retry_after_headers(retry_after: int | timedelta | None) -> dict[str, str]:
    if retry_after is None:
        return {}
    seconds = retry_after.total_seconds() if isinstance(retry_after, timedelta) else retry_after
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


class Locked(Problem):
    """423, e.g. an account locked after too many failed logins; `Retry-After` when known."""

    status = 423

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int | timedelta | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers=_retry_after_headers(retry_after), extensions=extensions)


class TooManyRequests(Problem):
    """429 with `Retry-After` (seconds) when known."""

    status = 429

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int | timedelta | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, headers=_retry_after_headers(retry_after), extensions=extensions)


class ServiceUnavailable(Problem):
    status = 503


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def problem_response(problem: Problem) -> ProblemResponse:
    """The HTTP response for a problem; carries the trace id so support can find the logs."""
    document = problem.to_dict()
    trace_id = _current_trace_id()
    if trace_id is not None:
        document.setdefault("trace_id", trace_id)
    return ProblemResponse(document, status_code=problem.status, headers=problem.headers)


# --- mapping every error path --------------------------------------------------------------


def _field_name(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location)


def _safe_message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "Invalid value"))
    # Pydantic's own messages never quote the input, but a custom validator's
    # `ValueError(f"{value} ...")` would: strip the value if it shows up anyway.
    value = error.get("input")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        if len(text) >= 4 and text in message:
            message = message.replace(text, REDACTED)
    return message


def validation_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic/FastAPI errors as `{"field", "message", "type"}`, dropping `input` and `ctx`
    (they hold the submitted values: card numbers, passwords)."""
    return [
        FieldError(
            field=_field_name(error.get("loc", ())),
            message=_safe_message(error),
            type=str(error.get("type", "value_error")),
        )
        for error in errors
    ]


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    title = status_title(exc.status_code)
    # Framework details are fixed strings ("Not Found", "There was an error parsing the
    # body"); a non-string detail is some handler's data structure and is not echoed.
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if exc.status_code == 405:
        allowed = allowed_methods(request.app.routes, request.url.path)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(Problem(detail, status=exc.status_code, headers=headers))


def allowed_methods(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """Every method some route serves at `path`: a path served by several routes (GET and POST
    of `/v1/consents` are two routes) allows the union of their methods, where Starlette's own
    405 lists only the first matching route's (RFC 9110 §15.5.6). Routes of included routers
    are visited as FastAPI sees them, with their prefixes."""
    methods: set[str] = set()
    for route in iter_route_contexts(routes):
        route_path, route_methods = route.path, route.methods
        if route_path is None or not route_methods:
            continue
        regex, _, _ = compile_path(route_path)
        if regex.match(path):
            methods.update(route_methods)
    return sorted(methods)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    malformed = [error for error in errors if error.get("type") == "json_invalid"]
    if malformed:
        position = malformed[0].get("loc", ("body",))[-1]
        return problem_response(
            BadRequest(
                f"The request body is not valid JSON (at character {position}).",
                slug="malformed-json",
                title="Malformed JSON",
            )
        )
    return problem_response(
        UnprocessableContent(
            "The request has invalid fields.",
            slug="validation-error",
            title="Validation error",
            errors=validation_errors(errors),
        )
    )


@dataclass(frozen=True)
class ProblemType:
    """How one kind of domain exception answers over HTTP: the declaration a service's
    `problems.py` makes for each of its refusals, so that the domain knows nothing of HTTP.

    The answer's type URI ends in `slug` (default: the kebab-cased class name,
    `StalePolicyVersion` → `stale-policy-version`) and its detail is `str(error)`: domain
    exceptions carry pseudonymous ids only (DESIGN rule 5). What the exception says of itself
    is carried over by these attributes, when it has them:
    - `field` (str): with a 422, `errors` names `"<location>.<field>"` (`body.email`), the
      way request validation names fields; with a 404 too, when the field refers to something
      that does not exist (`body.recipient_id`), as Stripe answers a body's dangling reference;
    - `field_errors` (sequence of `(field, message, type)`): several fields or reasons;
    - `retry_after` (timedelta or seconds): the `Retry-After` header.
    `extensions` adds members computed from the exception (e.g. the current policy version).
    """

    status: int
    title: str
    slug: str | None = None
    location: str = "body"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extensions: Callable[[Any], Mapping[str, Any]] | None = None

    def problem(self, error: Exception) -> Problem:
        """The problem document that answers `error`."""
        slug = self.slug or _kebab_case(type(error).__name__)
        members: dict[str, Any] = dict(self.extensions(error)) if self.extensions else {}
        field_errors = self._field_errors(error, slug)
        if field_errors:
            members["errors"] = [dict(e) for e in field_errors]
        headers = dict(self.headers)
        headers.update(_retry_after_headers(getattr(error, "retry_after", None)))
        return Problem(
            str(error) or None,
            status=self.status,
            title=self.title,
            slug=slug,
            headers=headers,
            extensions=members,
        )

    def _field_errors(self, error: Exception, slug: str) -> list[FieldError]:
        listed = getattr(error, "field_errors", None)
        if listed:
            return [
                FieldError(field=self._located(field), message=message, type=kind)
                for field, message, kind in listed
            ]
        field = getattr(error, "field", None)
        if self.status in {404, 422} and isinstance(field, str):
            kind = getattr(error, "kind", None) or slug.replace("-", "_")
            return [FieldError(field=self._located(field), message=str(error), type=kind)]
        return []

    def _located(self, field: str) -> str:
        return f"{self.location}.{field}" if self.location else field


ProblemTypes = Mapping[type[Exception], ProblemType]
"""A service's declaration of how each of its domain exceptions (and their subclasses) answers
over HTTP; the most specific class listed wins."""


def _problem_type_handler(
    problem_types: ProblemTypes,
) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        for cls in type(exc).__mro__:
            if cls in problem_types:
                return problem_response(problem_types[cls].problem(exc))
        log_unexpected_error(exc)
        return internal_error()

    return handle


def internal_error() -> ProblemResponse:
    """The generic 500: nothing of the exception reaches the body."""
    return problem_response(
        Problem("An unexpected error occurred.", status=500, slug="internal-error")
    )


def log_unexpected_error(exc: BaseException) -> None:
    """Log an unexpected exception by type and stack only: its message may quote personal data
    (e.g. a database error echoing a unique email), so it never reaches the log."""
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(f"{type(cause).__module__}.{type(cause).__qualname__}")
        cause = cause.__cause__ or cause.__context__
    logger.error(
        "unexpected error",
        extra={
            "exception_type": chain[0],
            "exception_chain": chain[1:],
            "stack": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    log_unexpected_error(exc)
    return internal_error()


class _UnexpectedErrorBoundary:
    """Turns an exception escaping the routes into a generic 500 problem and ends it there.

    Starlette's own 500 handler re-raises the exception afterwards, so the server would log
    it with its message and the tracing middleware would record the message on the span;
    both may carry personal data. Here it is logged once, by type and stack, and the span
    gets the exception type only.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log_unexpected_error(exc)
            span = trace.get_current_span()
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            if not response_started:
                await internal_error()(scope, receive, send)


def install_problem_handlers(app: FastAPI, problem_types: ProblemTypes | None = None) -> None:
    """Answer every error of `app` as problem+json: `Problem`s as they are, the service's
    domain exceptions as `problem_types` declares, framework errors in the same format, and
    anything else as a generic 500. Call it once, when building the app."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    handle_domain_error = _problem_type_handler(problem_types or {})
    for exception_class in problem_types or {}:
        app.add_exception_handler(exception_class, handle_domain_error)
    # The boundary catches what escapes the routes; the Exception handler is the fallback for
    # errors raised by middleware added outside it.
    app.add_middleware(_UnexpectedErrorBoundary)
    app.add_exception_handler(Exception, _on_unexpected_error)


# --- body size limit -----------------------------------------------------------------------


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException, so FastAPI's body parsing lets it through to the problem handler
    # instead of turning it into "There was an error parsing the body".
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_detail(max_bytes))


def _too_large_detail(max_bytes: int) -> str:
    return f"The request body exceeds {max_bytes} bytes."


class BodySizeLimit:
    """ASGI middleware refusing request bodies over `max_bytes` with 413 problem+json.

    It refuses at once when `Content-Length` announces too much, and counts the bytes as they
    stream in otherwise (chunked uploads, or a lying header).
    `app.add_middleware(BodySizeLimit, max_bytes=64 * 1024)`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ProblemResponse:
        return problem_response(ContentTooLarge(_too_large_detail(self.max_bytes)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    break  # unparsable: counting the stream still enforces the limit
                if announced > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            # Reached only when no problem handler answered it (a plain Starlette app).
            if not response_started:
                await self._too_large()(scope, receive, send)
