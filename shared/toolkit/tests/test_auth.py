"""Access tokens verified locally against the signing keys recorded from identity's events."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import httpx
import jwt
import pytest
from confide_toolkit.auth import (
    AUDIENCE,
    ISSUER,
    Caller,
    Role,
    TokenVerifier,
    bearer_caller,
    caller_dependency,
    load_jwks,
    load_signing_keys,
    public_jwk,
    record_signing_key,
    require_role,
    sign_access_token,
)
from confide_toolkit.clock import FrozenClock
from confide_toolkit.problem import PROBLEM_JSON, Problem, install_problem_handlers
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

SUBJECT = UUID("01900000-0000-7000-8000-000000000001")
SIGNED_IN_AT = datetime(2026, 1, 1, tzinfo=UTC)


class Keys:
    """Signing keys for one test: `publish` records one as the identity consumer would."""

    def __init__(self, engine: AsyncEngine, clock: FrozenClock) -> None:
        self.engine = engine
        self.clock = clock
        self.private: dict[str, Ed25519PrivateKey] = {}

    async def publish(self, kid: str, not_after: datetime | None = None) -> Ed25519PrivateKey:
        key = self.private.setdefault(kid, Ed25519PrivateKey.generate())
        async with self.engine.begin() as conn:
            await record_signing_key(conn, kid, public_jwk(key, kid), self.clock.now(), not_after)
        return key

    def token(
        self,
        kid: str,
        *,
        role: Role = "client",
        ttl: timedelta = timedelta(minutes=5),
        token_id: str = "jti-1",  # noqa: S107 (a token id, not a secret)
    ) -> str:
        return sign_access_token(
            self.private[kid],
            kid,
            SUBJECT,
            role,
            ttl,
            self.clock,
            SIGNED_IN_AT,
            token_id,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.now().timestamp())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(SUBJECT),
            "role": "client",
            "jti": "jti-1",
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(SIGNED_IN_AT)


@pytest.fixture
def keys(toolkit_engine: AsyncEngine, clock: FrozenClock) -> Keys:
    return Keys(toolkit_engine, clock)


@pytest.fixture
def verifier(toolkit_engine: AsyncEngine, clock: FrozenClock) -> TokenVerifier:
    return TokenVerifier(toolkit_engine, clock)


async def assert_refused(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(Problem) as refused:
        await verifier.verify(token)
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_token_signed_by_a_recorded_key_verifies(keys: Keys, verifier: TokenVerifier) -> None:
    await keys.publish("k1")
    caller = await verifier.verify(keys.token("k1", role="therapist", token_id="t-42"))
    assert caller == Caller(
        subject_id=SUBJECT,
        role="therapist",
        token_id="t-42",
        auth_time=SIGNED_IN_AT,
        expires_at=SIGNED_IN_AT + timedelta(minutes=5),
    )


async def test_recording_a_key_twice_is_harmless_and_keeps_the_latest_retirement(
    keys: Keys, toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    await keys.publish("k1")
    await keys.publish("k1")
    retired_at = clock.now() + timedelta(hours=1)
    await keys.publish("k1", not_after=retired_at)
    async with toolkit_engine.connect() as conn:
        assert set(await load_signing_keys(conn)) == {"k1"}
        assert await load_signing_keys(conn, valid_at=retired_at + timedelta(seconds=1)) == {}
        jwks = await load_jwks(conn, valid_at=clock.now())
    assert jwks == {"keys": [public_jwk(keys.private["k1"], "k1")]}


async def test_public_jwk_matches_the_signing_key_published_event() -> None:
    from confide_events.identity import PublicSigningKey

    jwk = public_jwk(Ed25519PrivateKey.generate(), "2026-01")
    assert PublicSigningKey.model_validate(jwk).model_dump() == jwk
    assert "d" not in jwk


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "d": "A" * 43},
        {"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "kid": "another"},
    ],
)
async def test_recording_refuses_anything_but_a_public_ed25519_key(
    toolkit_engine: AsyncEngine, jwk: dict[str, str]
) -> None:
    async with toolkit_engine.begin() as conn:
        with pytest.raises(ValueError):
            await record_signing_key(conn, "k1", jwk, SIGNED_IN_AT, None)


async def test_unknown_kid_is_refused(keys: Keys, verifier: TokenVerifier) -> None:
    await keys.publish("k1")
    keys.private["unpublished"] = Ed25519PrivateKey.generate()
    await assert_refused(verifier, keys.token("unpublished"))


async def test_expired_token_is_refused_after_the_leeway(
    keys: Keys, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    await keys.publish("k1")
    token = keys.token("k1", ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5, seconds=20))
    assert (await verifier.verify(token)).subject_id == SUBJECT  # within the 30 s leeway
    clock.advance(timedelta(seconds=11))
    await assert_refused(verifier, token)


async def test_token_of_a_retired_key_is_refused(
    keys: Keys, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    await keys.publish("k1", not_after=clock.now() - timedelta(seconds=1))
    await assert_refused(verifier, keys.token("k1"))


@pytest.fixture
def reloading_verifier(toolkit_engine: AsyncEngine, clock: FrozenClock) -> TokenVerifier:
    """A verifier that reloads the keys whenever it may (once a second)."""
    return TokenVerifier(toolkit_engine, clock, max_cache_age=timedelta(0))


async def test_a_token_verified_before_is_refused_once_its_key_is_retired(
    keys: Keys, reloading_verifier: TokenVerifier, clock: FrozenClock
) -> None:
    # Signatures are remembered per token; the key's retirement is not.
    verifier = reloading_verifier
    await keys.publish("k1")
    token = keys.token("k1")
    assert (await verifier.verify(token)).subject_id == SUBJECT
    assert (await verifier.verify(token)).subject_id == SUBJECT
    await keys.publish("k1", not_after=clock.now() + timedelta(seconds=10))
    await asyncio.sleep(1.1)  # reloads are paced by real time, at most one a second
    assert (await verifier.verify(token)).subject_id == SUBJECT
    clock.advance(timedelta(seconds=11))
    await assert_refused(verifier, token)


async def test_a_token_verified_before_is_checked_again_when_the_keys_reload(
    keys: Keys, reloading_verifier: TokenVerifier
) -> None:
    await keys.publish("k1")
    token = keys.token("k1")
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decoded.append(args[0])
        return real_decode(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt, "decode", counting_decode)
        for _ in range(5):
            await reloading_verifier.verify(token)
        assert decoded == [token]  # its signature checked once
        await asyncio.sleep(1.1)
        await reloading_verifier.verify(token)  # the keys reloaded: checked against the new ones
        assert decoded == [token, token]


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"iss": "evil-identity"},
        {"role": "admin"},
        {"role": None},
        {"jti": None},
        {"sub": "not-a-uuid"},
        {"auth_time": None},
        {"exp": None},
        {"iat": "yesterday"},
    ],
)
async def test_token_with_wrong_or_missing_claims_is_refused(
    keys: Keys, verifier: TokenVerifier, overrides: dict[str, Any]
) -> None:
    key = await keys.publish("k1")
    token = jwt.encode(
        keys.claims(**overrides), key, algorithm="EdDSA", headers={"kid": "k1", "typ": "at+jwt"}
    )
    await assert_refused(verifier, token)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_tampered_payload_is_refused(keys: Keys, verifier: TokenVerifier) -> None:
    await keys.publish("k1")
    header, _, signature = keys.token("k1", role="client").split(".")
    forged = f"{header}.{_b64(keys.claims(role='compliance'))}.{signature}"
    await assert_refused(verifier, forged)


async def test_alg_none_and_hs256_confusion_are_refused(
    keys: Keys, verifier: TokenVerifier
) -> None:
    await keys.publish("k1")
    headers = {"kid": "k1", "typ": "at+jwt"}
    unsigned = jwt.encode(keys.claims(), "", algorithm="none", headers=headers)
    await assert_refused(verifier, unsigned)
    # HS256 "signed" with the public key, which everyone knows.
    public_x = public_jwk(keys.private["k1"], "k1")["x"]
    confused = jwt.encode(keys.claims(), public_x, algorithm="HS256", headers=headers)
    await assert_refused(verifier, confused)
    handmade = f"{_b64({'alg': 'none', 'kid': 'k1', 'typ': 'at+jwt'})}.{_b64(keys.claims())}."
    await assert_refused(verifier, handmade)


async def test_other_jwt_types_signed_by_the_same_key_are_refused(
    keys: Keys, verifier: TokenVerifier
) -> None:
    key = await keys.publish("k1")
    token = jwt.encode(keys.claims(), key, algorithm="EdDSA", headers={"kid": "k1"})
    await assert_refused(verifier, token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 10_000])
async def test_garbage_is_refused(verifier: TokenVerifier, token: str) -> None:
    await assert_refused(verifier, token)


async def test_key_published_later_is_picked_up_on_rotation(
    keys: Keys, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    await keys.publish("k1")
    assert (await verifier.verify(keys.token("k1"))).role == "client"
    await asyncio.sleep(1.1)  # reloads are paced by real time, at most one a second
    await keys.publish("k2")
    assert (await verifier.verify(keys.token("k2"))).role == "client"
    assert (await verifier.verify(keys.token("k1"))).role == "client"


async def test_unknown_kids_reload_the_keys_at_most_once_per_second(
    keys: Keys, toolkit_engine: AsyncEngine, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    await keys.publish("k1")
    queries: list[str] = []

    def count(*args: Any) -> None:
        queries.append(args[2])

    event.listen(toolkit_engine.sync_engine, "before_cursor_execute", count)
    try:
        await verifier.verify(keys.token("k1"))
        for attempt in range(20):
            forged = jwt.encode(
                keys.claims(),
                keys.private["k1"],
                algorithm="EdDSA",
                headers={"kid": f"made-up-{attempt}", "typ": "at+jwt"},
            )
            await assert_refused(verifier, forged)
        assert len([q for q in queries if "signing_keys" in q]) == 1
        await asyncio.sleep(1.1)
        await assert_refused(verifier, forged)
        assert len([q for q in queries if "signing_keys" in q]) == 2
    finally:
        event.remove(toolkit_engine.sync_engine, "before_cursor_execute", count)


async def test_revoked_token_is_refused(
    keys: Keys, toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    await keys.publish("k1")
    revoked = {"jti-logged-out"}

    async def is_revoked(caller: Caller) -> bool:
        return caller.token_id in revoked

    verifier = TokenVerifier(toolkit_engine, clock, is_revoked=is_revoked)
    assert (await verifier.verify(keys.token("k1", token_id="jti-live"))).token_id == "jti-live"
    await assert_refused(verifier, keys.token("k1", token_id="jti-logged-out"))


# --- through FastAPI ------------------------------------------------------------------------


def build_app(verifier: TokenVerifier) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.state.token_verifier = verifier
    signed_in = caller_dependency(verifier)

    @app.get("/me")
    async def me(caller: Annotated[Caller, Depends(signed_in)]) -> dict[str, str]:
        return {"subject_id": str(caller.subject_id), "role": caller.role}

    @app.get("/compliance")
    async def compliance_only(
        caller: Annotated[Caller, Depends(require_role("compliance", caller=signed_in))],
    ) -> dict[str, str]:
        return {"role": caller.role}

    @app.get("/from-state")
    async def from_state(caller: Annotated[Caller, Depends(bearer_caller)]) -> dict[str, str]:
        return {"role": caller.role}

    @app.get("/staff")
    async def staff(
        caller: Annotated[Caller, Depends(require_role("therapist", "compliance"))],
    ) -> dict[str, str]:
        return {"role": caller.role}

    return app


Get = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
async def get(verifier: TokenVerifier) -> AsyncIterator[Get]:
    transport = httpx.ASGITransport(build_app(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def get(path: str, token: str | None = None) -> httpx.Response:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            return await client.get(path, headers=headers)

        yield get


async def test_dependency_gives_the_caller(keys: Keys, get: Get) -> None:
    await keys.publish("k1")
    response = await get("/me", keys.token("k1", role="therapist"))
    assert response.status_code == 200
    assert response.json() == {"subject_id": str(SUBJECT), "role": "therapist"}
    from_state = await get("/from-state", keys.token("k1"))
    assert from_state.json() == {"role": "client"}


@pytest.mark.parametrize("path", ["/me", "/compliance", "/from-state", "/staff"])
async def test_missing_token_is_a_401_problem_with_a_bearer_challenge(get: Get, path: str) -> None:
    response = await get(path)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["type"] == "https://confide.dev/problems/unauthorized"


async def test_invalid_token_is_a_401_problem(keys: Keys, get: Get) -> None:
    await keys.publish("k1")
    response = await get("/me", keys.token("k1") + "x")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_wrong_role_is_a_403_problem(keys: Keys, get: Get) -> None:
    await keys.publish("k1")
    response = await get("/compliance", keys.token("k1", role="client"))
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "https://confide.dev/problems/forbidden"
    assert (await get("/staff", keys.token("k1", role="client"))).status_code == 403
    assert (await get("/staff", keys.token("k1", role="therapist"))).status_code == 200
    allowed = await get("/compliance", keys.token("k1", role="compliance"))
    assert allowed.json() == {"role": "compliance"}


def test_require_role_refuses_unknown_roles() -> None:
    with pytest.raises(ValueError):
        require_role("admin")  # type: ignore[arg-type]
