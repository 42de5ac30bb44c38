"""The OpenAPI document declares every answer a service gives, not only the happy one.

Gateway teams generate their clients from each service's `/openapi.json`. FastAPI documents a
route's success and its request-validation error; the toolkit answers more than that on every
route, and always as `application/problem+json` (`confide_toolkit.problem`). This module adds
what the toolkit itself answers, from what each operation has:

- a request body → 400 (malformed JSON) and 413 (larger than the service accepts);
- parameters or a body → 422, as a problem with `errors` naming each field;
- a bearer token (its `security`) → 401 (with `WWW-Authenticate`) and 403;
- a path parameter → 404;
- a command (any method but GET) → 409 (`concurrent-change`) and the statuses of the service's
  own domain refusals (its `problems.PROBLEM_TYPES`), which a command may meet;
- every operation → 503 with `Retry-After` while the database or Kafka is out of reach.

An operation restricted to some roles (`confide_toolkit.auth.require_role`) names them in the
extension `x-roles` (e.g. `["compliance"]`), so a gateway, or a test of the authorisation
matrix, knows who may call it without reading the code.

A route declares anything else of its own with `responses=`, e.g. `problem_responses(402)`, or
a success in another media type (a PDF). Every error answer is documented with the `Problem`
schema under `application/problem+json`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import iter_route_contexts

from confide_toolkit.problem import PROBLEM_JSON, status_title

PROBLEM_SCHEMA_REF: Final = "#/components/schemas/Problem"

PROBLEM_SCHEMA: Final[Mapping[str, Any]] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: the one error format of every Confide API.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "trace_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Each field refused, named by its place in the request "
            "(`body.email`); the value is never echoed.",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
_WWW_AUTHENTICATE: Final = {
    "WWW-Authenticate": {
        "description": "The scheme expected: Bearer.",
        "schema": {"type": "string"},
    }
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers these statuses as problems of its own."""
    return {status: _problem_answer(status) for status in statuses}


def _problem_answer(status: int, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": status_title(status),
        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}},
    }
    if headers:
        answer["headers"] = dict(headers)
    return answer


def document_answers(app: FastAPI, command_statuses: Iterable[int] = ()) -> None:
    """Make `app.openapi()` declare every answer the toolkit and the service's domain give."""
    domain_statuses = sorted({409, *command_statuses})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            declare_answers(document, domain_statuses)
            declare_roles(document, app)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ROLES_EXTENSION: Final = "x-roles"


def declare_roles(document: dict[str, Any], app: FastAPI) -> None:
    """Name in `x-roles` the roles each role-restricted operation of `app` admits, in place."""
    paths = document.get("paths", {})
    # Routes of included routers are visited as FastAPI documents them, with their prefixes.
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if not isinstance(dependant, Dependant) or route.path_format is None:
            continue
        roles = _roles_required(dependant)
        if roles is None:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation[ROLES_EXTENSION] = sorted(roles)


def _roles_required(dependant: Dependant) -> frozenset[str] | None:
    # `require_role` builds a closure over the roles it admits (`allowed`); read them from
    # there rather than asking every route to repeat them. Several such dependencies on one
    # route admit only the roles all of them admit.
    required: frozenset[str] | None = None
    for dependency in dependant.dependencies:
        call = dependency.call
        found: frozenset[str] | None = None
        if (
            getattr(call, "__module__", None) == "confide_toolkit.auth"
            and getattr(call, "__name__", None) == "caller_with_role"
            and inspect.isfunction(call)
        ):
            allowed = inspect.getclosurevars(call).nonlocals.get("allowed")
            if isinstance(allowed, frozenset):
                found = frozenset(str(role) for role in allowed)
        inner = _roles_required(dependency)
        for roles in (found, inner):
            if roles is not None:
                required = roles if required is None else required & roles
    return required


def declare_answers(document: dict[str, Any], command_statuses: Iterable[int]) -> None:
    """Add to each operation of `document` the answers of the module docstring, in place."""
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = dict(
        PROBLEM_SCHEMA
    )
    commands = list(command_statuses)
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                _declare(operation, method, commands)


def _declare(operation: dict[str, Any], method: str, command_statuses: list[int]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    wanted: dict[int, Mapping[str, Any] | None] = {503: _RETRY_AFTER}
    if has_body:
        wanted.update({400: None, 413: None})
    if has_body or parameters:
        wanted[422] = None
    if operation.get("security"):
        wanted.update({401: _WWW_AUTHENTICATE, 403: None})
    if any(parameter.get("in") == "path" for parameter in parameters):
        wanted[404] = None
    if method != "get":
        wanted.update({status: None for status in command_statuses})
    for status, headers in wanted.items():
        responses.setdefault(str(status), _problem_answer(status, headers))
    # Every error answer, whoever declared it first, is a problem document.
    for code, answer in responses.items():
        if code.isdigit() and int(code) >= HTTPStatus.BAD_REQUEST:
            answer["content"] = {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}}
            answer.setdefault("description", status_title(int(code)))
