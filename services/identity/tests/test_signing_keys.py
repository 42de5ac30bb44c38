"""Signing keys: published as events, served as a JWKS, enough for another service to verify
identity's tokens on its own, and rotated without cutting tokens short."""

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import jwt
import pytest
from confide_identity.app import MIGRATIONS
from confide_testing import eventually, serving
from confide_toolkit.auth import Caller, load_signing_keys
from confide_toolkit.clock import FrozenClock
from confide_toolkit.service import Service
from confide_toolkit.settings import ServiceSettings
from fastapi import APIRouter, Depends
from sqlalchemy import text

from .conftest import RunningIdentity, SettingsFactory, bearer, running_identity

pytestmark = pytest.mark.integration


async def test_the_jwks_serves_the_public_signing_key_and_no_private_part(
    identity: RunningIdentity,
) -> None:
    _, body = await identity.register()
    kid = jwt.get_unverified_header((await identity.tokens(body))["access_token"])["kid"]

    response = await identity.client.get("/.well-known/jwks.json")

    assert response.status_code == 200
    [key] = [k for k in response.json()["keys"] if k["kid"] == kid]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert "d" not in key


async def test_private_signing_keys_are_stored_only_wrapped(identity: RunningIdentity) -> None:
    _, body = await identity.register()
    await identity.tokens(body)
    key = await identity.deps.signing_keys.current()
    raw = key.private_key.private_bytes_raw()

    async with identity.deps.engine.connect() as conn:
        stored = [
            bytes(row[0])
            for row in await conn.execute(
                text("SELECT wrapped_private_key FROM identity_signing_keys")
            )
        ]

    assert stored and all(raw not in wrapped for wrapped in stored)


async def test_another_service_verifies_identity_tokens_from_the_published_keys_alone(
    identity: RunningIdentity, other_database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    user_id, body = await identity.register(role="therapist")
    tokens = await identity.tokens(body)
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    # A service of its own: another database and KEK, knowing identity only from Kafka.
    other = Service(
        ServiceSettings(
            service_name="messaging",
            database_url=other_database_url,
            kafka_bootstrap=kafka_bootstrap,
            kek_file=tmp_path / "other-kek.json",
            consumer_group=f"verifier-test-{uuid.uuid4().hex[:8]}",
        ),
        migrations=MIGRATIONS,
        clock=identity.clock,
    )
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(caller: Annotated[Caller, Depends(other.current_caller)]) -> dict[str, str]:
        return {"subject_id": str(caller.subject_id), "role": caller.role}

    app = other.create_app(title="verifier", description="test", routers=[router], deps=None)
    async with serving(app) as client:

        async def knows_the_key() -> bool:
            async with other.engine.connect() as conn:
                return kid in await load_signing_keys(conn)

        await eventually(knows_the_key)
        accepted = await client.get("/whoami", headers=bearer(tokens))
        tampered = await client.get("/whoami", headers=bearer(tokens["access_token"][:-4] + "AAAA"))

    assert accepted.status_code == 200
    assert accepted.json() == {"subject_id": str(user_id), "role": "therapist"}
    assert tampered.status_code == 401


async def test_rotation_signs_with_the_new_key_while_old_tokens_stay_valid_until_expiry(
    make_settings: SettingsFactory, clock: FrozenClock
) -> None:
    settings = make_settings(
        signing_key_rotation_seconds=600,
        signing_key_publish_ahead_seconds=120,
        access_token_ttl_seconds=300,
        lockout_seconds=60,
    )
    async with running_identity(settings, clock) as identity:
        _, body = await identity.register()
        first = await identity.tokens(body)
        first_kid = jwt.get_unverified_header(first["access_token"])["kid"]

        # Within publish-ahead of the rotation: the successor is published, not used yet.
        clock.advance(timedelta(seconds=500))
        before = await identity.tokens(body)
        assert jwt.get_unverified_header(before["access_token"])["kid"] == first_kid

        async def successor_known() -> bool:
            # Only this identity's own successor counts: identity.events also carries the
            # keys of every other test's identity, which this one's consumer records too.
            async with identity.deps.engine.connect() as conn:
                own = set(
                    (await conn.execute(text("SELECT kid FROM identity_signing_keys"))).scalars()
                )
            keys = (await identity.client.get("/.well-known/jwks.json")).json()["keys"]
            return any(key["kid"] in own - {first_kid} for key in keys)

        await eventually(successor_known)

        clock.advance(timedelta(seconds=130))
        after = await identity.tokens(body)
        new_kid = jwt.get_unverified_header(after["access_token"])["kid"]
        old_still_valid = await identity.client.get("/v1/accounts/me", headers=bearer(before))
        new_valid = await identity.client.get("/v1/accounts/me", headers=bearer(after))

        # `before` was issued at +500 s for 300 s: past +800 s (and the leeway) it has expired.
        clock.advance(timedelta(seconds=210))
        old_expired = await identity.client.get("/v1/accounts/me", headers=bearer(before))
        new_still_valid = await identity.client.get("/v1/accounts/me", headers=bearer(after))

    assert new_kid != first_kid
    assert old_still_valid.status_code == 200 and new_valid.status_code == 200
    assert old_expired.status_code == 401 and new_still_valid.status_code == 200
