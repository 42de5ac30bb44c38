"""Signing keys, service secrets, refresh tokens and keyed hashes.

Signing keys: Ed25519, stored only wrapped by the service KEK. Each key signs for
`rotation` and its successor is created and published (`SigningKeyPublished`, through the
outbox) `publish_ahead` before it takes over, so every service has learnt it from
identity.events before it sees a token signed with it. Identity itself signs only with a key
its own consumer has recorded in `signing_keys` (the same read model every service verifies
from); at first start that means waiting for the first key to come back from Kafka. When a
successor is created, the current key is published again with `not_after` = the successor's
start + the access-token lifetime + a margin: tokens it signed stay valid until they expire,
and not longer.

Refresh tokens are 256-bit random strings; only their SHA-256 digest is stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

from confide_events.identity import PublicSigningKey, SigningKeyPublished
from confide_toolkit.auth import public_jwk
from confide_toolkit.clock import Clock
from confide_toolkit.ids import uuid7
from confide_toolkit.kek import KeyEncryptionKeys
from confide_toolkit.outbox import Outbox
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_identity import store

REFRESH_TOKEN_PREFIX: Final = "crt_"  # noqa: S105 (a prefix, not a secret)
_REFRESH_TOKEN_BYTES = 32
# Covers clock skew between identity and the services verifying (their leeway is 30 s).
_RETIREMENT_MARGIN = timedelta(minutes=2)
_SECRET_BYTES = 32


class SigningKeyUnavailable(Exception):
    """No signing key is known to the verifiers yet (first start, Kafka unreachable)."""

    def __init__(self) -> None:
        super().__init__("No signing key has been published yet; try again shortly.")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


class SigningKeys:
    """Identity's signing keys: creation, rotation, publication and use."""

    def __init__(
        self,
        engine: AsyncEngine,
        keks: KeyEncryptionKeys,
        outbox: Outbox,
        clock: Clock,
        *,
        rotation: timedelta,
        publish_ahead: timedelta,
        access_token_ttl: timedelta,
        wait_for_first_key: float,
    ) -> None:
        self._engine = engine
        self._keks = keks
        self._outbox = outbox
        self._clock = clock
        self._rotation = rotation
        self._publish_ahead = min(publish_ahead, rotation)
        self._access_token_ttl = access_token_ttl
        self._wait_for_first_key = wait_for_first_key
        self._unwrapped: dict[str, Ed25519PrivateKey] = {}

    async def rotate_if_due(self) -> None:
        """Create the first key, or the current key's successor when it is due, and publish
        it; safe to call from every replica at any time."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            if not self._rotation_due(await store.newest_signing_key(conn), now):
                return
        async with self._engine.begin() as conn:
            # Replicas racing to rotate: the lock orders them and the second sees the first's key.
            await store.lock_signing_key_rotation(conn)
            newest = await store.newest_signing_key(conn)
            if not self._rotation_due(newest, now):
                return
            if newest is None:
                await self._create(conn, activates_at=now)
                return
            kid, activates_at = newest
            successor_starts = max(now + self._publish_ahead, activates_at + self._rotation)
            await self._create(conn, activates_at=successor_starts)
            await self._retire(
                conn, kid, successor_starts + self._access_token_ttl + _RETIREMENT_MARGIN
            )

    def _rotation_due(self, newest: tuple[str, datetime] | None, now: datetime) -> bool:
        if newest is None:
            return True
        _, activates_at = newest
        return now >= activates_at + self._rotation - self._publish_ahead

    async def _create(self, conn: AsyncConnection, activates_at: datetime) -> None:
        now = self._clock.now()
        private_key = Ed25519PrivateKey.generate()
        kid = f"ik-{uuid7().hex}"
        raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        kek_version, wrapped = self._keks.wrap(raw)
        await store.add_signing_key(conn, kid, kek_version, wrapped, now, activates_at)
        await self._outbox.put(conn, _published(private_key, kid, now, None))
        self._unwrapped[kid] = private_key

    async def _retire(self, conn: AsyncConnection, kid: str, not_after: datetime) -> None:
        kek_version, wrapped = await store.retire_signing_key(conn, kid, not_after)
        private_key = self._unwrap(kid, kek_version, wrapped)
        # Republishing with not_after is how every verifier learns when the key retires.
        await self._outbox.put(conn, _published(private_key, kid, self._clock.now(), not_after))

    async def current(self) -> SigningKey:
        """The key to sign with now: the newest active key that the verifiers already know.
        Waits (at first start) up to the configured time for it to come back from Kafka."""
        await self.rotate_if_due()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_for_first_key
        while True:
            async with self._engine.connect() as conn:
                known = await store.signing_key_in_use(conn, self._clock.now())
            if known is not None:
                kid, kek_version, wrapped = known
                return SigningKey(kid, self._unwrap(kid, kek_version, wrapped))
            if loop.time() >= deadline:
                raise SigningKeyUnavailable()
            await asyncio.sleep(0.05)

    def _unwrap(self, kid: str, kek_version: int, wrapped: bytes) -> Ed25519PrivateKey:
        key = self._unwrapped.get(kid)
        if key is None:
            key = Ed25519PrivateKey.from_private_bytes(self._keks.unwrap(kek_version, wrapped))
            self._unwrapped[kid] = key
        return key


def _published(
    private_key: Ed25519PrivateKey, kid: str, now: datetime, not_after: datetime | None
) -> SigningKeyPublished:
    return SigningKeyPublished(
        kid=kid,
        public_jwk=PublicSigningKey.model_validate(public_jwk(private_key, kid)),
        published_at=now,
        not_after=not_after,
    )


class ServiceSecrets:
    """Identity's own keys for keyed hashing, created on first use and stored wrapped by the
    KEK (never in plaintext on disk); unwrapped once per process."""

    BLIND_INDEX: Final = "email-blind-index"
    ADDRESS_HASH: Final = "client-address-hash"

    def __init__(self, engine: AsyncEngine, keks: KeyEncryptionKeys, clock: Clock) -> None:
        self._engine = engine
        self._keks = keks
        self._clock = clock
        self._cache: dict[str, bytes] = {}

    async def get(self, name: str) -> bytes:
        """The secret of that name, creating it on first use (once, whatever the replicas)."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        async with self._engine.begin() as conn:
            version, wrapped = self._keks.wrap(secrets.token_bytes(_SECRET_BYTES))
            # The first replica's secret is kept; the others read it back.
            kept_version, kept = await store.keep_service_secret(
                conn, name, version, wrapped, self._clock.now()
            )
            secret = self._keks.unwrap(kept_version, kept)
            if kept_version != self._keks.current_version:
                # Keep it readable after the old KEK version retires.
                version, wrapped = self._keks.wrap(secret)
                await store.rewrap_service_secret(conn, name, version, wrapped)
        self._cache[name] = secret
        return secret


def keyed_hash(secret: bytes, purpose: str, value: str) -> str:
    """HMAC-SHA256 of a value under a service secret, hex: finds equal values without storing
    them. `purpose` separates the uses of one secret."""
    return hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()


def new_refresh_token() -> str:
    """A fresh opaque refresh token (256 random bits)."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(_REFRESH_TOKEN_BYTES)


def refresh_token_digest(token: str) -> bytes:
    """What is stored of a refresh token: its SHA-256 (it has 256 bits of entropy, so a plain
    hash cannot be reversed by guessing)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def access_token_id(session_id: UUID) -> str:
    """A `jti` naming the session it belongs to, so revoking the session revokes the token."""
    return f"{session_id}.{uuid7().hex}"


def session_of(token_id: str) -> UUID | None:
    """The session a `jti` belongs to (None for a jti identity did not issue)."""
    session, _, _ = token_id.partition(".")
    try:
        return UUID(session)
    except ValueError:
        return None


def b32_secret(raw: bytes) -> str:
    """A TOTP secret as authenticator apps take it: base32, without padding."""
    return base64.b32encode(raw).decode("ascii").rstrip("=")
