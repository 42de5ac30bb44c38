"""Sign-in, refresh, sign-out and the second factor, against the real database and broker."""

import base64
import uuid
from datetime import timedelta
from typing import Any

import jwt
import pytest
from confide_events.topics import IDENTITY_EVENTS
from confide_identity.store import accounts
from confide_testing import eventually
from confide_toolkit.auth import AUDIENCE, ISSUER
from confide_toolkit.clock import FrozenClock
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy import select

from .conftest import (
    STRONG_PASSWORD,
    RunningIdentity,
    SettingsFactory,
    bearer,
    events_about,
    registration,
    running_identity,
)

pytestmark = pytest.mark.integration


async def test_sign_in_answers_a_bearer_pair_with_the_documented_claims(
    identity: RunningIdentity,
) -> None:
    user_id, body = await identity.register(role="therapist")

    response = await identity.sign_in(body)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == identity.settings.access_token_ttl_seconds
    assert tokens["refresh_token"].startswith("crt_")
    header = jwt.get_unverified_header(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert header["alg"] == "EdDSA" and header["kid"]
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE
    assert claims["sub"] == str(user_id) and claims["role"] == "therapist"
    assert claims["exp"] - claims["iat"] == identity.settings.access_token_ttl_seconds
    assert claims["auth_time"] == int(identity.clock.now().timestamp())
    assert claims["jti"]
    # The session, which a revocation names for every other service.
    assert uuid.UUID(claims["sid"])


def _without_trace(response: Any) -> dict[str, Any]:
    document: dict[str, Any] = response.json()
    document.pop("trace_id", None)
    return document


async def test_unknown_email_and_wrong_password_get_the_same_answer_and_the_same_work(
    make_settings: SettingsFactory, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(account_failure_limit=100, address_failure_limit=100)
    async with running_identity(settings, clock) as identity:
        _, body = await identity.register()
        await identity.tokens(body)  # warm up: secrets, keys, the dummy hash

        # Timing is the side channel: an unknown email must cost the same Argon2id
        # verification as a wrong password. Count the verifications rather than time them
        # (tests never assert wall-clock times; `make bench` measures).
        hasher = identity.deps.hasher
        verify = hasher.verify
        verifications: list[str] = []

        async def counting_verify(password: str, encoded: str) -> bool:
            verifications.append(encoded)
            return await verify(password, encoded)

        monkeypatch.setattr(hasher, "verify", counting_verify)

        async def attempt(email: str) -> Any:
            return await identity.client.post(
                "/v1/sessions", json={"email": email, "password": "wrong-password-123"}
            )

        wrong_password = [await attempt(body["email"]) for _ in range(3)]
        per_wrong_password = len(verifications)
        unknown_email = [await attempt(f"{uuid.uuid4().hex}@example.org") for _ in range(3)]
        per_unknown_email = len(verifications) - per_wrong_password

    answers = {
        (r.status_code, r.headers["www-authenticate"], str(_without_trace(r)))
        for r in wrong_password + unknown_email
    }
    assert len(answers) == 1
    assert next(iter(answers))[0] == 401
    assert per_wrong_password == per_unknown_email == 3
    # Every verification is a real Argon2id hash, the unknown emails' a dummy one.
    assert all(encoded.startswith("$argon2id$") for encoded in verifications)


async def test_repeated_failures_lock_the_account_until_the_cool_down_ends(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    limit = identity.settings.account_failure_limit
    wrong = {**body, "password": "not-my-password-9"}

    answers = [(await identity.sign_in(wrong)).status_code for _ in range(limit)]
    locked = await identity.sign_in(body)

    assert answers == [401] * (limit - 1) + [429]
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) == identity.settings.lockout_seconds

    async def announced() -> bool:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return any(e.type == "confide.identity.AccountLocked" for e in events)

    await eventually(announced)

    identity.clock.advance(timedelta(seconds=identity.settings.lockout_seconds + 1))
    assert (await identity.sign_in(body)).status_code == 200


async def test_an_unknown_email_locks_like_a_real_one_so_429_reveals_nothing(
    identity: RunningIdentity,
) -> None:
    stranger = registration()
    answers = [
        (await identity.sign_in(stranger)).status_code
        for _ in range(identity.settings.account_failure_limit + 1)
    ]
    assert answers[-2:] == [429, 429]


async def test_one_address_failing_on_many_accounts_gets_429(
    make_settings: SettingsFactory, clock: FrozenClock
) -> None:
    settings = make_settings(address_failure_limit=3)
    async with running_identity(settings, clock) as identity:
        answers = [(await identity.sign_in(registration())).status_code for _ in range(4)]
        _, body = await identity.register()
        still_blocked = await identity.sign_in(body)
        clock.advance(timedelta(seconds=settings.lockout_seconds + 1))
        later = await identity.sign_in(body)

    assert answers == [401, 401, 401, 429]
    assert still_blocked.status_code == 429 and "retry-after" in still_blocked.headers
    assert later.status_code == 200


async def test_a_refresh_token_works_once_and_yields_a_working_pair(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    first = await identity.tokens(body)

    rotated = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]}
    )

    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    me = await identity.client.get("/v1/accounts/me", headers=bearer(second))
    assert me.status_code == 200
    claims = jwt.decode(second["access_token"], options={"verify_signature": False})
    assert claims["auth_time"] == int(identity.clock.now().timestamp())
    third = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    first = await identity.tokens(body)
    second = (
        await identity.client.post(
            "/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]}
        )
    ).json()

    replay = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]}
    )

    assert replay.status_code == 401
    after = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert after.status_code == 401
    me = await identity.client.get("/v1/accounts/me", headers=bearer(second))
    assert me.status_code == 401
    # Another sign-in of the same person is another family and keeps working.
    assert (await identity.sign_in(body)).status_code == 200


async def test_unknown_refresh_tokens_are_refused(identity: RunningIdentity) -> None:
    response = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": "crt_" + "A" * 43}
    )
    assert response.status_code == 401


async def test_signing_out_stops_the_sessions_tokens_but_not_other_sessions(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    session = await identity.tokens(body)
    other = await identity.tokens(body)

    signed_out = await identity.client.delete("/v1/sessions/current", headers=bearer(session))

    assert signed_out.status_code == 204
    me = await identity.client.get("/v1/accounts/me", headers=bearer(session))
    refresh = await identity.client.post(
        "/v1/sessions/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert (me.status_code, refresh.status_code) == (401, 401)
    assert (await identity.client.get("/v1/accounts/me", headers=bearer(other))).status_code == 200


async def test_sign_in_rehashes_the_password_when_the_parameters_were_raised(
    identity: RunningIdentity,
) -> None:
    user_id, body = await identity.register()
    assert await _stored_hash(identity, user_id) is not None
    assert "t=2" in await _stored_hash(identity, user_id)

    identity.deps.hasher.iterations = 3
    assert (await identity.sign_in(body)).status_code == 200

    assert "t=3" in await _stored_hash(identity, user_id)
    assert (await identity.sign_in(body)).status_code == 200


async def _stored_hash(identity: RunningIdentity, user_id: uuid.UUID) -> str:
    async with identity.deps.engine.connect() as conn:
        sealed = await conn.scalar(
            select(accounts.c.password_hash).where(accounts.c.account_id == user_id)
        )
        plain = await identity.deps.sealing.keyring.decrypt(
            conn, user_id, "identity.profile", f"account:{user_id}:password", bytes(sealed)
        )
    assert isinstance(plain, bytes)
    return plain.decode()


def _code(secret: str, identity: RunningIdentity, shift: int = 0) -> str:
    raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    moment = int(identity.clock.now().timestamp()) + shift
    return TOTP(raw, 6, SHA1(), 30).generate(moment).decode()  # noqa: S303


async def test_totp_is_enforced_only_after_confirmation_and_codes_work_once(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    headers = bearer(await identity.tokens(body))

    enrolment = await identity.client.post("/v1/accounts/me/mfa/totp", headers=headers)
    assert enrolment.status_code == 200
    secret = enrolment.json()["secret"]
    assert enrolment.json()["otpauth_uri"].startswith("otpauth://totp/")
    # Not confirmed yet: the password alone still signs in.
    assert (await identity.sign_in(body)).status_code == 200

    wrong = await identity.client.post(
        "/v1/accounts/me/mfa/totp/confirm", json={"code": "000000"}, headers=headers
    )
    malformed = await identity.client.post(
        "/v1/accounts/me/mfa/totp/confirm", json={"code": "12ab"}, headers=headers
    )
    confirmed = await identity.client.post(
        "/v1/accounts/me/mfa/totp/confirm",
        json={"code": _code(secret, identity)},
        headers=headers,
    )
    assert (wrong.status_code, malformed.status_code, confirmed.status_code) == (422, 422, 204)
    assert wrong.json()["errors"][0]["field"] == "body.code"
    me = await identity.client.get("/v1/accounts/me", headers=headers)
    assert me.json()["mfa_enabled"] is True

    without_code = await identity.sign_in(body)
    assert without_code.status_code == 401
    assert without_code.json()["type"].endswith("/totp-required")
    # The confirmation used this step's code; the next step's is accepted once.
    identity.clock.advance(timedelta(seconds=30))
    code = _code(secret, identity)
    assert (await identity.sign_in(body, totp_code=code)).status_code == 200
    replay = await identity.sign_in(body, totp_code=code)
    assert replay.status_code == 401
    assert replay.json()["type"].endswith("/invalid-totp-code")
    # A second enrolment would let a stolen session swap the factor: refused.
    again = await identity.client.post("/v1/accounts/me/mfa/totp", headers=headers)
    assert again.status_code == 409


async def test_bad_sign_in_bodies_get_422_naming_the_field(identity: RunningIdentity) -> None:
    for body, field in (
        ({"email": "a@b.org"}, "body.password"),
        ({"email": "a@b.org", "password": "x", "totp_code": "1234567"}, "body.totp_code"),
        ({"email": "a@b.org", "password": "p" * 5000}, "body.password"),
    ):
        response = await identity.client.post("/v1/sessions", json=body)
        assert response.status_code == 422
        assert field in [e["field"] for e in response.json()["errors"]]


def _session_of(tokens: dict[str, Any]) -> str:
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    session: str = claims["sid"]
    return session


async def test_every_way_a_session_ends_is_announced_naming_the_session(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    changing, other = await identity.tokens(body), await identity.tokens(body)
    body["password"] = "saffron-glacier-meadow-41"
    changed = await identity.client.post(
        "/v1/accounts/me/password",
        json={"current_password": STRONG_PASSWORD, "new_password": body["password"]},
        headers=bearer(changing),
    )
    assert changed.status_code == 204, changed.text
    await identity.client.delete("/v1/sessions/current", headers=bearer(changing))
    stolen = await identity.tokens(body)
    for _ in range(2):  # the second use of a spent refresh token revokes its family
        await identity.client.post(
            "/v1/sessions/refresh", json={"refresh_token": stolen["refresh_token"]}
        )
    closing = await identity.tokens(body)
    closed = await identity.client.post("/v1/accounts/me/close", headers=bearer(closing))
    assert closed.status_code == 202, closed.text

    async def announcements() -> list[tuple[str, list[str]]]:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return [
            (e.data["reason"], e.data["session_ids"])
            for e in events
            if e.type == "confide.identity.SessionsRevoked"
        ]

    async def all_announced() -> bool:
        return len(await announcements()) == 4

    await eventually(all_announced)
    assert await announcements() == [
        ("password_changed", [_session_of(other)]),
        ("signed_out", [_session_of(changing)]),
        ("refresh_token_reused", [_session_of(stolen)]),
        ("account_closed", [_session_of(closing)]),
    ]
