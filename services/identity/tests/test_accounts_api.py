"""The account endpoints against the real database and broker."""

from __future__ import annotations

import uuid

import pytest
from confide_events.topics import IDENTITY_EVENTS
from confide_identity.domain import Account, EmailAlreadyRegistered
from confide_testing import eventually
from confide_toolkit.ids import uuid7
from sqlalchemy import text

from .conftest import STRONG_PASSWORD, RunningIdentity, bearer, events_about, registration

pytestmark = pytest.mark.integration


async def test_registration_answers_the_user_id_and_emits_user_registered_with_id_and_role_only(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, _ = await identity.register(role="therapist")

    async def registered() -> bool:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return any(e.type == "confide.identity.UserRegistered" for e in events)

    await eventually(registered)
    [event] = [
        e
        for e in await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        if e.type == "confide.identity.UserRegistered"
    ]
    assert set(event.data) == {"subject_id", "role", "registered_at"}
    assert event.data["role"] == "therapist"


async def test_the_signed_in_person_reads_their_profile(identity: RunningIdentity) -> None:
    user_id, body = await identity.register(email="  Grace.Hopper.X@Example.org ")
    tokens = await identity.tokens({**body, "email": "grace.hopper.x@example.org"})

    response = await identity.client.get("/v1/accounts/me", headers=bearer(tokens))

    assert response.status_code == 200
    assert response.json() == {
        "user_id": str(user_id),
        "email": "grace.hopper.x@example.org",
        "display_name": body["display_name"],
        "role": "client",
        "phone": None,
        "address": None,
        "mfa_enabled": False,
        "password_age_days": 0,
        "profile_erased": False,
    }


async def test_an_email_already_used_in_any_case_is_refused_with_409(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    again = registration(email=body["email"].upper())

    response = await identity.client.post("/v1/accounts", json=again)

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert body["email"] not in response.text.lower()


async def test_the_store_refuses_a_second_account_for_one_email(
    identity: RunningIdentity,
) -> None:
    # Two registrations of one email racing past the check: the unique index settles it, and
    # the store says so in the domain's words.
    deps, email_index = identity.deps, f"index-{uuid.uuid4().hex}"

    async def open_account() -> None:
        account = Account.register(
            uuid7(), "client", email_index, "cA==", "aA==", identity.clock.now()
        )
        async with deps.engine.begin() as conn:
            await deps.accounts.save(conn, account)

    await open_account()
    with pytest.raises(EmailAlreadyRegistered):
        await open_account()


@pytest.mark.parametrize(
    ("overrides", "field", "kind"),
    [
        ({"password": "short-pw"}, "body.password", "password_too_short"),
        ({"password": "Password2031!"}, "body.password", "password_common"),
        ({"email": "nobody"}, "body.email", "string_pattern_mismatch"),  # the documented pattern
        ({"role": "compliance"}, "body.role", "literal_error"),
        ({"display_name": ""}, "body.display_name", "string_too_short"),
        ({"display_name": "Ada\u0000Evil"}, "body.display_name", "value_error"),
    ],
)
async def test_bad_registrations_get_a_422_naming_the_field(
    identity: RunningIdentity, overrides: dict[str, str], field: str, kind: str
) -> None:
    body = registration(**overrides)

    response = await identity.client.post("/v1/accounts", json=body)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert {"field": field, "type": kind} in [
        {"field": e["field"], "type": e["type"]} for e in errors
    ]
    assert body["password"] not in response.text


async def test_a_password_containing_the_email_is_refused(identity: RunningIdentity) -> None:
    body = registration(email="marie.curie@example.org")
    body["password"] = "Marie.Curie@Example.org-2026"

    response = await identity.client.post("/v1/accounts", json=body)

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "password_has_email"


async def test_rejected_requests_write_nothing(identity: RunningIdentity) -> None:
    _, taken = await identity.register()
    before = await _row_counts(identity)

    bad_bodies = [
        registration(password="password1234"),
        registration(email="not-an-email"),
        registration(role="compliance"),
        registration(email=taken["email"]),
        {**registration(), "is_admin": True},
    ]
    for body in bad_bodies:
        response = await identity.client.post("/v1/accounts", json=body)
        assert response.status_code in (409, 422)
    oversized = await identity.client.post(
        "/v1/accounts", json=registration(display_name="x" * 100_000)
    )
    malformed = await identity.client.post(
        "/v1/accounts", content=b'{"email": ', headers={"content-type": "application/json"}
    )

    assert oversized.status_code == 413
    assert malformed.status_code == 400
    assert await _row_counts(identity) == before


async def _row_counts(identity: RunningIdentity) -> dict[str, int]:
    async with identity.deps.engine.connect() as conn:
        return {
            table: int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
            for table in ("accounts", "stored_events", "data_keys", "sessions", "service_secrets")
        }


async def test_profile_changes_are_saved_and_read_back(identity: RunningIdentity) -> None:
    _, body = await identity.register()
    headers = bearer(await identity.tokens(body))

    changed = await identity.client.patch(
        "/v1/accounts/me",
        json={"display_name": "Ada L.", "phone": "+44 20 7946 0000", "address": "1 Lane, London"},
        headers=headers,
    )
    cleared = await identity.client.patch("/v1/accounts/me", json={"phone": None}, headers=headers)

    assert changed.status_code == 200
    assert changed.json()["phone"] == "+44 20 7946 0000"
    me = (await identity.client.get("/v1/accounts/me", headers=headers)).json()
    assert cleared.status_code == 200
    assert (me["display_name"], me["phone"], me["address"]) == ("Ada L.", None, "1 Lane, London")


async def test_bad_profile_changes_are_refused(identity: RunningIdentity) -> None:
    _, body = await identity.register()
    headers = bearer(await identity.tokens(body))

    for change, field in (
        ({"phone": "call me maybe"}, "body.phone"),
        ({"display_name": None}, "body.display_name"),
        ({"email": "x@y.org"}, "body.email"),
    ):
        response = await identity.client.patch("/v1/accounts/me", json=change, headers=headers)
        assert response.status_code == 422, change
        assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_changing_the_password_ends_other_sessions_and_emits_password_changed(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    current = await identity.tokens(body)
    other = await identity.tokens(body)
    new_password = "saffron-glacier-meadow-41"

    wrong = await identity.client.post(
        "/v1/accounts/me/password",
        json={"current_password": "not-the-password-1", "new_password": new_password},
        headers=bearer(current),
    )
    weak = await identity.client.post(
        "/v1/accounts/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": "password123456"},
        headers=bearer(current),
    )
    changed = await identity.client.post(
        "/v1/accounts/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": new_password},
        headers=bearer(current),
    )

    assert (wrong.status_code, weak.status_code, changed.status_code) == (422, 422, 204)
    assert wrong.json()["errors"][0]["field"] == "body.current_password"
    assert weak.json()["errors"][0]["field"] == "body.new_password"
    assert (await identity.sign_in(body)).status_code == 401
    assert (await identity.sign_in({**body, "password": new_password})).status_code == 200
    me = await identity.client.get("/v1/accounts/me", headers=bearer(current))
    assert me.status_code == 200
    assert (await identity.client.get("/v1/accounts/me", headers=bearer(other))).status_code == 401
    refreshed = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": other["refresh_token"]}
    )
    assert refreshed.status_code == 401

    async def announced() -> bool:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return any(e.type == "confide.identity.PasswordChanged" for e in events)

    await eventually(announced)


async def test_closing_the_account_ends_every_session_and_emits_account_closed(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    first = await identity.tokens(body)
    second = await identity.tokens(body)

    closed = await identity.client.post("/v1/accounts/me/close", headers=bearer(first))

    assert closed.status_code == 202
    for tokens in (first, second):
        me = await identity.client.get("/v1/accounts/me", headers=bearer(tokens))
        assert me.status_code == 401
        refresh = await identity.client.post(
            "/v1/sessions/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refresh.status_code == 401
    assert (await identity.sign_in(body)).status_code == 401

    async def announced() -> bool:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return any(e.type == "confide.identity.AccountClosed" for e in events)

    await eventually(announced)


async def test_endpoints_for_the_signed_in_refuse_anonymous_and_forged_tokens(
    identity: RunningIdentity,
) -> None:
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    for headers in ({}, bearer(forged), bearer(str(uuid.uuid4()))):
        response = await identity.client.get("/v1/accounts/me", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
