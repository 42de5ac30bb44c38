"""Every error path of an app answers RFC 9457 problem+json, and none leaks personal data."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from confide_toolkit.problem import (
    PROBLEM_JSON,
    BodySizeLimit,
    Conflict,
    Forbidden,
    Locked,
    NotFound,
    Problem,
    ProblemType,
    ProblemTypes,
    TooManyRequests,
    Unauthorized,
    UnprocessableContent,
    install_problem_handlers,
)
from fastapi import FastAPI, Request
from pydantic import BaseModel, field_validator

SECRET_CARD = "4111111111111111"
SECRET_PASSWORD = "correct horse battery staple"
SECRET_EMAIL = "alice@example.com"


class StalePolicyVersion(Exception):
    """A domain exception the app maps to 409."""


class StalerStillPolicyVersion(StalePolicyVersion):
    pass


class UnknownRecipient(Exception):
    """A domain refusal about one field of the command."""

    field = "recipient_id"


class PasswordRefused(Exception):
    """A domain refusal with several reasons, one field each."""

    def __init__(self) -> None:
        super().__init__("The password does not meet the password policy.")
        self.field_errors = [
            ("password", "Too short.", "password_too_short"),
            ("password", "Found in a breach.", "password_breached"),
        ]


class SignInLocked(Exception):
    """A domain refusal that knows when to try again."""

    retry_after = timedelta(seconds=29.2)
    current_policy_version = "v4"


PROBLEM_TYPES: ProblemTypes = {
    StalePolicyVersion: ProblemType(409, "Stale policy version"),
    UnknownRecipient: ProblemType(422, "Unknown recipient"),
    PasswordRefused: ProblemType(422, "Password refused", slug="password-refused"),
    SignInLocked: ProblemType(
        423, "Sign-in locked", extensions=lambda e: {"policy": e.current_policy_version}
    ),
}


class Address(BaseModel):
    city: str
    postal_code: str


class PaymentMethod(BaseModel):
    card_number: str
    exp_month: int
    password: str
    billing_address: Address

    @field_validator("card_number")
    @classmethod
    def _luhn(cls, value: str) -> str:
        if not value.isdigit() or len(value) < 12:
            # A careless validator quoting the value: the handler must still not echo it.
            raise ValueError(f"{value} is not a card number")
        return value

    @field_validator("password")
    @classmethod
    def _long(cls, value: str) -> str:
        if len(value) < 40:
            raise ValueError("too short")
        return value


def build_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, PROBLEM_TYPES)
    app.add_middleware(BodySizeLimit, max_bytes=1024)

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        raise NotFound(f"No thing {thing_id}.")

    @app.post("/payment-methods")
    async def add_payment_method(body: PaymentMethod) -> dict[str, str]:
        return {"last4": body.card_number[-4:]}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/raise/{kind}")
    async def raise_(kind: str) -> None:
        match kind:
            case "conflict":
                raise Conflict("Already there.", extensions={"consent_id": "c-1"})
            case "forbidden":
                raise Forbidden()
            case "unauthorized":
                raise Unauthorized("Sign in first.")
            case "locked":
                raise Locked("Account locked.", retry_after=timedelta(seconds=90.5))
            case "throttled":
                raise TooManyRequests(retry_after=30)
            case "domain":
                raise StalePolicyVersion("Policy version 3 is no longer current.")
            case "domain-subclass":
                raise StalerStillPolicyVersion()
            case "domain-field":
                raise UnknownRecipient("No recipient 7 is registered.")
            case "domain-fields":
                raise PasswordRefused()
            case "domain-locked":
                raise SignInLocked("Too many failed sign-ins.")
            case "direct":
                raise Problem("Declined.", status=402, slug="card-declined", title="Declined")
            case "weak":
                raise UnprocessableContent(
                    "Choose a stronger password.",
                    errors=[{"field": "body.password", "message": "breached", "type": "weak"}],
                )
            case _:
                raise RuntimeError(f"user {SECRET_EMAIL} has card {SECRET_CARD}")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # raise_app_exceptions=False: behave like a server, which answers instead of crashing.
    transport = httpx.ASGITransport(build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["type"] == f"https://confide.dev/problems/{slug}"
    assert isinstance(body["title"], str) and body["title"]
    return body


async def test_raised_not_found_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/things/7"), 404, "not-found")
    assert body["title"] == "Not Found"
    assert body["detail"] == "No thing 7."


@pytest.mark.parametrize(
    ("kind", "status", "slug"),
    [
        ("conflict", 409, "conflict"),
        ("forbidden", 403, "forbidden"),
        ("direct", 402, "card-declined"),
        ("weak", 422, "unprocessable-content"),
    ],
)
async def test_raised_problems_keep_their_status_and_type(
    client: httpx.AsyncClient, kind: str, status: int, slug: str
) -> None:
    assert_problem(await client.get(f"/raise/{kind}"), status, slug)


async def test_extension_members_are_in_the_body(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/raise/conflict"), 409, "conflict")
    assert body["consent_id"] == "c-1"
    weak = assert_problem(await client.get("/raise/weak"), 422, "unprocessable-content")
    assert weak["errors"] == [{"field": "body.password", "message": "breached", "type": "weak"}]


async def test_unauthorized_challenges_for_a_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/raise/unauthorized")
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_locked_and_throttled_say_when_to_retry(client: httpx.AsyncClient) -> None:
    locked = await client.get("/raise/locked")
    assert_problem(locked, 423, "locked")
    assert locked.headers["retry-after"] == "91"
    throttled = await client.get("/raise/throttled")
    assert_problem(throttled, 429, "too-many-requests")
    assert throttled.headers["retry-after"] == "30"


async def test_mapped_domain_exception_and_its_subclasses(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/raise/domain"), 409, "stale-policy-version")
    assert body["title"] == "Stale policy version"
    assert body["detail"] == "Policy version 3 is no longer current."
    subclass = await client.get("/raise/domain-subclass")
    assert_problem(subclass, 409, "staler-still-policy-version")


async def test_a_domain_refusal_of_one_field_names_it_as_validation_does(
    client: httpx.AsyncClient,
) -> None:
    body = assert_problem(await client.get("/raise/domain-field"), 422, "unknown-recipient")
    assert body["errors"] == [
        {
            "field": "body.recipient_id",
            "message": "No recipient 7 is registered.",
            "type": "unknown_recipient",
        }
    ]


async def test_a_domain_refusal_with_several_reasons_lists_each(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/raise/domain-fields"), 422, "password-refused")
    assert [(e["field"], e["type"]) for e in body["errors"]] == [  # type: ignore[attr-defined]
        ("body.password", "password_too_short"),
        ("body.password", "password_breached"),
    ]


async def test_a_domain_refusal_says_when_to_retry_and_adds_its_members(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/raise/domain-locked")
    body = assert_problem(response, 423, "sign-in-locked")
    assert response.headers["retry-after"] == "30"
    assert body["policy"] == "v4"


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not-found")


async def test_wrong_method_is_a_405_problem_naming_the_allowed_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.delete("/things/1")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET"


async def test_validation_errors_name_each_field_by_its_dotted_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/payment-methods",
        json={
            "card_number": "12",
            "exp_month": "soon",
            "password": "x" * 50,
            "billing_address": {"city": "Lyon"},
        },
    )
    body = assert_problem(response, 422, "validation-error")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert {error["field"] for error in errors} == {
        "body.card_number",
        "body.exp_month",
        "body.billing_address.postal_code",
    }
    for error in errors:
        assert set(error) == {"field", "message", "type"}
    assert_problem(await client.get("/things/seven"), 422, "validation-error")


async def test_validation_errors_never_echo_the_submitted_values(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/payment-methods",
        json={
            "card_number": SECRET_CARD + "x",
            "exp_month": SECRET_CARD,
            "password": SECRET_PASSWORD,
            "billing_address": "Rue Secrète 12",
        },
    )
    assert_problem(response, 422, "validation-error")
    assert SECRET_CARD not in response.text
    assert SECRET_PASSWORD not in response.text
    assert "Secr" not in response.text


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/payment-methods",
        content=b'{"card_number": "' + SECRET_CARD.encode() + b'",',
        headers={"content-type": "application/json"},
    )
    body = assert_problem(response, 400, "malformed-json")
    assert "not valid JSON" in str(body["detail"])
    assert SECRET_CARD not in response.text


async def test_unexpected_error_is_a_generic_500_that_hides_the_message(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="confide_toolkit.problem"):
        response = await client.get("/raise/boom")
    body = assert_problem(response, 500, "internal-error")
    assert body["detail"] == "An unexpected error occurred."
    assert SECRET_EMAIL not in response.text and SECRET_CARD not in response.text
    [record] = [r for r in caplog.records if r.name == "confide_toolkit.problem"]
    assert record.__dict__["exception_type"] == "builtins.RuntimeError"
    assert record.exc_info is None  # no formatter can print the message
    logged = record.getMessage() + str(record.__dict__["stack"])
    assert SECRET_EMAIL not in logged and SECRET_CARD not in logged


async def test_announced_oversized_body_is_refused_with_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b"x" * 2000)
    body = assert_problem(response, 413, "content-too-large")
    assert "1024" in str(body["detail"])


async def test_streamed_oversized_body_is_refused_with_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 400

    # A generator body is sent chunked, without Content-Length: the bytes are counted.
    response = await client.post("/echo", content=chunks())
    assert_problem(response, 413, "content-too-large")
    small = await client.post("/echo", content=b"x" * 1000)
    assert small.json() == {"size": 1000}


async def test_oversized_body_on_a_plain_asgi_app_is_refused_too() -> None:
    async def reads_everything(scope: dict[str, object], receive: object, send: object) -> None:
        while True:
            message = await receive()  # type: ignore[operator]
            if not message.get("more_body"):
                break

    transport = httpx.ASGITransport(BodySizeLimit(reads_everything, max_bytes=10))  # type: ignore[arg-type]

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 8
        yield b"x" * 8

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/", content=chunks())
    assert_problem(response, 413, "content-too-large")
