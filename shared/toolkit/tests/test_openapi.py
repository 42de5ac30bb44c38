"""The OpenAPI document declares what the app really answers: the toolkit's statuses, every
error as problem+json, the roles a route admits, and `Allow` lists what the document lists."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import httpx
import pytest
from confide_toolkit.auth import Caller, bearer_caller, require_role
from confide_toolkit.openapi import PROBLEM_SCHEMA_REF, ROLES_EXTENSION, document_answers
from confide_toolkit.problem import PROBLEM_JSON, install_problem_handlers
from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel


class Note(BaseModel):
    text: str


SignedIn = Annotated[Caller, Depends(bearer_caller)]
Compliance = Annotated[Caller, Depends(require_role("compliance"))]


def tiny_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {}

    @app.get("/notes/{note_id}")
    async def read_note(note_id: UUID, caller: SignedIn) -> dict[str, str]:
        return {}

    @app.post("/notes", status_code=201)
    async def write_note(body: Note, caller: SignedIn) -> dict[str, str]:
        return {}

    # As the services do: their routes come in through an included router with a prefix.
    included = APIRouter(prefix="/v1")

    @included.get("/notes")
    async def list_notes(caller: Compliance, limit: int = 10) -> dict[str, str]:
        return {}

    @included.post("/notes")
    async def write_v1_note(body: Note, caller: Compliance) -> dict[str, str]:
        return {}

    app.include_router(included)
    document_answers(app, command_statuses=[422, 423])
    return app


def statuses(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"]}


@pytest.fixture
def document() -> dict[str, Any]:
    return tiny_app().openapi()


def test_each_operation_declares_what_its_shape_can_meet(document: dict[str, Any]) -> None:
    paths = document["paths"]

    # No body, no parameter, no token: only the outage answer besides its success.
    assert statuses(paths["/public"]["get"]) == {200, 503}
    # A token and a path parameter: 401, 403, 404, and 422 for the malformed id.
    assert statuses(paths["/notes/{note_id}"]["get"]) == {200, 401, 403, 404, 422, 503}
    # A command with a body: 400/413 for the body, 409 and the domain's statuses.
    assert statuses(paths["/notes"]["post"]) == {201, 400, 401, 403, 409, 413, 422, 423, 503}
    # A query parameter, no path parameter: no 404; a GET meets no domain refusal.
    assert statuses(paths["/v1/notes"]["get"]) == {200, 401, 403, 422, 503}


def test_every_error_is_a_problem_document_with_its_headers(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    for path_item in document["paths"].values():
        for operation in path_item.values():
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    assert answer["content"] == {
                        PROBLEM_JSON: {"schema": {"$ref": PROBLEM_SCHEMA_REF}}
                    }, code
    read = document["paths"]["/notes/{note_id}"]["get"]["responses"]
    assert "WWW-Authenticate" in read["401"]["headers"]
    assert "Retry-After" in read["503"]["headers"]


def test_role_restricted_operations_name_their_roles(document: dict[str, Any]) -> None:
    paths = document["paths"]

    assert paths["/v1/notes"]["get"][ROLES_EXTENSION] == ["compliance"]
    assert paths["/v1/notes"]["post"][ROLES_EXTENSION] == ["compliance"]
    assert ROLES_EXTENSION not in paths["/notes"]["post"]  # any signed-in person
    assert ROLES_EXTENSION not in paths["/public"]["get"]


@pytest.mark.parametrize(
    ("path", "methods"), [("/notes", {"POST"}), ("/v1/notes", {"GET", "POST"})]
)
async def test_a_wrong_method_lists_every_method_the_document_lists(
    path: str, methods: set[str]
) -> None:
    app = tiny_app()
    documented = {method.upper() for method in app.openapi()["paths"][path]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.request("PUT", path)

    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    # GET and POST of /v1/notes are two routes of an included router: Allow names both, not
    # only the first one found.
    assert set(response.headers["allow"].split(", ")) == documented == methods
