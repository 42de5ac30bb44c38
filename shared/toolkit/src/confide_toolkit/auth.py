"""Access tokens: identity signs them (EdDSA, Ed25519), every service verifies them locally.

Services never call identity (DESIGN rule 1): identity publishes each signing key as a
`SigningKeyPublished` event, each service's consumer records it in its own `signing_keys`
table with `record_signing_key`, and `TokenVerifier` checks tokens against that table.
The claim names live here, on both sides: `sign_access_token` (identity) and
`TokenVerifier.verify` (everyone).

A token is a JWT with header `{"alg": "EdDSA", "typ": "at+jwt", "kid": ...}` and claims
`iss`, `aud`, `sub` (the person's UUID), `role`, `jti`, `iat`, `exp`, `auth_time`, and `sid`
(the session the token was issued for, which identity's `SessionsRevoked` names; tokens issued
before the claim existed have none, and are refused only once they expire).
"""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the dependency
# closures below at runtime, and a string annotation cannot see a closure variable.

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, get_args
from uuid import UUID

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Column, DateTime, Table, Text, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from confide_toolkit.clock import Clock
from confide_toolkit.database import toolkit_metadata
from confide_toolkit.problem import Forbidden, Unauthorized

ISSUER: Final = "confide-identity"
AUDIENCE: Final = "confide"
ACCESS_TOKEN_ALGORITHM: Final = "EdDSA"  # noqa: S105 (an algorithm name, not a secret)
ACCESS_TOKEN_TYPE: Final = "at+jwt"  # noqa: S105 (a media type, not a secret)
"""The `typ` header (RFC 9068), so no other JWT signed with the same key passes as an access
token."""

Role = Literal["client", "therapist", "compliance"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

# A token is a few hundred bytes; refusing huge ones before parsing is cheap protection.
_MAX_TOKEN_LENGTH = 4096

VERIFIED_TOKENS_KEPT: Final = 4096
"""Signatures remembered per process: a client sends the same access token with each request
of its ten minutes, and checking its signature (and parsing it, twice) again each time was a
tenth of a consent grant's CPU."""

signing_keys = Table(
    "signing_keys",
    toolkit_metadata,
    Column("kid", Text, primary_key=True),
    Column("public_jwk", JSONB, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=True),
)
"""The read model of identity's public signing keys, fed by `SigningKeyPublished`."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the verified content of an access token."""

    subject_id: UUID
    role: Role
    token_id: str
    auth_time: datetime
    expires_at: datetime | None = None
    """When the token expires; lets a revocation list forget a `token_id` after it."""
    session_id: UUID | None = None
    """The session the token was issued for (its `sid` claim), which a revocation names."""


# --- keys as JWKs ---------------------------------------------------------------------------


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(key: Ed25519PrivateKey | Ed25519PublicKey, kid: str) -> dict[str, str]:
    """The public JWK (RFC 8037) of an Ed25519 key: `{kty: OKP, crv: Ed25519, x, kid, use: sig,
    alg: EdDSA}`. Given a private key, only its public half is ever written out."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url_encode(raw),
        "kid": kid,
        "use": "sig",
        "alg": ACCESS_TOKEN_ALGORITHM,
    }


def key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 public key of a JWK; `ValueError` for anything else, or a private JWK."""
    if "d" in jwk:
        raise ValueError("a private key must never be published")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 (OKP) key")
    if jwk.get("alg", ACCESS_TOKEN_ALGORITHM) != ACCESS_TOKEN_ALGORITHM:
        raise ValueError("the key is not for EdDSA")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise ValueError("the key has no x")
    try:
        raw = _b64url_decode(x)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("x is not base64url") from exc
    if len(raw) != 32:
        raise ValueError("x is not a 32-byte Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- the signing_keys read model ----------------------------------------------------------


async def record_signing_key(
    conn: AsyncConnection,
    kid: str,
    public_jwk: Mapping[str, Any],
    published_at: datetime,
    not_after: datetime | None,
) -> None:
    """Record (or update) a published signing key; idempotent, for the `SigningKeyPublished`
    consumer, in the transaction that moves its position.

    A republished key replaces the stored one, so identity retires a key by publishing it
    again with `not_after`. Raises `ValueError` for a JWK that is not a public Ed25519 key.
    """
    key_from_jwk(public_jwk)
    if public_jwk.get("kid", kid) != kid:
        raise ValueError("public_jwk.kid differs from kid")
    jwk = {
        name: public_jwk[name] for name in ("kty", "crv", "x", "use", "alg") if name in public_jwk
    }
    jwk["kid"] = kid
    statement = insert(signing_keys).values(
        kid=kid, public_jwk=jwk, published_at=published_at, not_after=not_after
    )
    statement = statement.on_conflict_do_update(
        index_elements=[signing_keys.c.kid],
        set_={
            "public_jwk": statement.excluded.public_jwk,
            "published_at": statement.excluded.published_at,
            "not_after": statement.excluded.not_after,
        },
    )
    await conn.execute(statement)


@dataclass(frozen=True)
class _KnownKey:
    key: Ed25519PublicKey
    not_after: datetime | None


async def _load_known_keys(conn: AsyncConnection) -> dict[str, _KnownKey]:
    rows = await conn.execute(
        select(signing_keys.c.kid, signing_keys.c.public_jwk, signing_keys.c.not_after)
    )
    return {row.kid: _KnownKey(key_from_jwk(row.public_jwk), row.not_after) for row in rows}


async def load_signing_keys(
    conn: AsyncConnection, *, valid_at: datetime | None = None
) -> dict[str, Ed25519PublicKey]:
    """The recorded public keys by `kid`; with `valid_at`, only those not retired by then."""
    known = await _load_known_keys(conn)
    return {
        kid: entry.key
        for kid, entry in known.items()
        if valid_at is None or entry.not_after is None or valid_at <= entry.not_after
    }


async def load_jwks(
    conn: AsyncConnection, *, valid_at: datetime
) -> dict[str, list[dict[str, Any]]]:
    """The JWKS document (`{"keys": [...]}`) of the keys valid at `valid_at`, e.g. for
    identity's `/.well-known/jwks.json`."""
    rows = await conn.execute(
        select(signing_keys.c.public_jwk, signing_keys.c.not_after).order_by(
            signing_keys.c.published_at
        )
    )
    return {
        "keys": [
            dict(row.public_jwk)
            for row in rows
            if row.not_after is None or valid_at <= row.not_after
        ]
    }


# --- issuing (identity) ---------------------------------------------------------------------


def sign_access_token(
    private_key: Ed25519PrivateKey,
    kid: str,
    subject_id: UUID,
    role: Role,
    ttl: timedelta,
    clock: Clock,
    auth_time: datetime,
    token_id: str,
    session_id: UUID | None = None,
) -> str:
    """A signed access token for `subject_id`, valid for `ttl` from now.

    `auth_time` is when the person last proved who they are (it survives refreshes);
    `token_id` becomes the `jti`, `session_id` the `sid` that revocations name.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    now = clock.now()
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(subject_id),
        "role": role,
        "jti": token_id,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "auth_time": int(auth_time.timestamp()),
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return jwt.encode(
        claims,
        private_key,
        algorithm=ACCESS_TOKEN_ALGORITHM,
        headers={"kid": kid, "typ": ACCESS_TOKEN_TYPE},
    )


# --- verifying (every service) --------------------------------------------------------------


def _invalid(detail: str = "The access token is invalid.") -> Unauthorized:
    return Unauthorized(detail, bearer_error="invalid_token")


RevocationCheck = Callable[[Caller], Awaitable[bool]]
"""Whether a verified caller's token has been revoked (by its `token_id` or `session_id`)."""


class TokenVerifier:
    """Verifies access tokens against the `signing_keys` table, caching the keys in memory.

    An unknown `kid` reloads the cache (a key published since the last load, i.e. a rotation),
    but at most once per `min_refresh_interval`, so tokens with made-up kids cannot hammer the
    database. The cache is also reloaded after `max_cache_age`, so a key retired with
    `not_after` stops working everywhere within that time. Token times come from `clock`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        leeway_seconds: int = 30,
        *,
        is_revoked: RevocationCheck | None = None,
        min_refresh_interval: timedelta = timedelta(seconds=1),
        max_cache_age: timedelta = timedelta(minutes=1),
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._leeway = timedelta(seconds=leeway_seconds)
        self._is_revoked = is_revoked
        self._min_refresh_interval = min_refresh_interval
        self._max_cache_age = max_cache_age
        self._keys: dict[str, _KnownKey] = {}
        # Reload pacing runs on the process's monotonic time, not the injected clock: a test's
        # frozen clock must not stop the verifier from ever learning a new key.
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        # Token -> the key that verified its signature and its claims. Only the signature
        # check is remembered: times, the key's retirement and revocation are checked on every
        # request, and a reload of the keys (each `max_cache_age`) checks signatures afresh.
        self._verified: dict[str, tuple[str, _KnownKey, dict[str, Any]]] = {}

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            # Another task may have reloaded while this one waited for the lock.
            if self._loaded_at is not None:
                age = timedelta(seconds=now - self._loaded_at)
                if age < self._min_refresh_interval or (not force and age < self._max_cache_age):
                    return
            async with self._engine.connect() as conn:
                self._keys = await _load_known_keys(conn)
            self._loaded_at = now

    async def _key_for(self, kid: str) -> _KnownKey | None:
        await self._refresh(force=False)
        if kid not in self._keys:
            await self._refresh(force=True)
        return self._keys.get(kid)

    async def verify(self, token: str) -> Caller:
        """The caller an access token speaks for; raises `Unauthorized` (401 problem) when
        the token is malformed, signed by an unknown or retired key, expired, not meant for
        Confide, or revoked."""
        if len(token) > _MAX_TOKEN_LENGTH:
            raise _invalid()
        known, claims = await self._verified_claims(token)
        now = self._clock.now()
        if known.not_after is not None and now > known.not_after:
            raise _invalid("The access token is signed by an unknown key.")
        caller = self._caller_from(claims, now)
        if self._is_revoked is not None and await self._is_revoked(caller):
            raise _invalid("The access token has been revoked.")
        return caller

    async def _verified_claims(self, token: str) -> tuple[_KnownKey, dict[str, Any]]:
        """The key that signed the token and its claims, once its signature, algorithm, type,
        issuer, audience and required claims are checked (remembered per token)."""
        remembered = self._verified.get(token)
        if remembered is not None:
            await self._refresh(force=False)
            if self._keys.get(remembered[0]) is remembered[1]:
                return remembered[1], remembered[2]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid() from exc
        # Checked before any key is touched: refuses `none` and HS256 alg confusion.
        if header.get("alg") != ACCESS_TOKEN_ALGORITHM or header.get("typ") != ACCESS_TOKEN_TYPE:
            raise _invalid()
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid()
        known = await self._key_for(kid)
        if known is None:
            raise _invalid("The access token is signed by an unknown key.")

        try:
            claims = jwt.decode(
                token,
                known.key,
                algorithms=[ACCESS_TOKEN_ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                # Times are checked by `verify`, against the injected clock, not the system time.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "sub", "role", "jti", "iat", "exp", "auth_time"],
                },
            )
        except jwt.PyJWTError as exc:
            raise _invalid() from exc
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = (kid, known, claims)
        return known, claims

    def _caller_from(self, claims: Mapping[str, Any], now: datetime) -> Caller:
        try:
            expires_at = _timestamp(claims["exp"])
            issued_at = _timestamp(claims["iat"])
            auth_time = _timestamp(claims["auth_time"])
            subject_id = UUID(claims["sub"])
            session_id = None if claims.get("sid") is None else UUID(claims["sid"])
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise _invalid() from exc
        if now > expires_at + self._leeway:
            raise _invalid("The access token has expired.")
        if issued_at > now + self._leeway or auth_time > now + self._leeway:
            raise _invalid()
        role = claims["role"]
        token_id = claims["jti"]
        if role not in ROLES or not isinstance(token_id, str) or not token_id:
            raise _invalid()
        return Caller(subject_id, role, token_id, auth_time, expires_at, session_id)


def _timestamp(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a NumericDate")
    return datetime.fromtimestamp(value, UTC)


# --- FastAPI dependencies -------------------------------------------------------------------

# auto_error=False: a missing header is answered by our own 401 problem, not FastAPI's.
_bearer_scheme = HTTPBearer(auto_error=False, description="An access token issued by identity.")
_BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]

CallerDependency = Callable[..., Awaitable[Caller]]


async def _verify_credentials(
    verifier: TokenVerifier, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    if credentials is None:
        raise Unauthorized("A bearer access token is required.")
    return await verifier.verify(credentials.credentials)


def caller_dependency(verifier: TokenVerifier) -> CallerDependency:
    """A FastAPI dependency giving the verified `Caller`, or answering 401 problem+json with
    `WWW-Authenticate: Bearer`."""

    async def caller(credentials: _BearerCredentials) -> Caller:
        return await _verify_credentials(verifier, credentials)

    return caller


async def bearer_caller(request: Request, credentials: _BearerCredentials) -> Caller:
    """The verified `Caller`, using the verifier the app keeps in `app.state.token_verifier`
    (set in the lifespan, where the engine is created); 401 problem+json otherwise."""
    verifier = getattr(request.app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError("app.state.token_verifier is not set")
    return await _verify_credentials(verifier, credentials)


def require_role(*roles: Role, caller: CallerDependency = bearer_caller) -> CallerDependency:
    """A dependency giving the `Caller` when their role is one of `roles`, else 403
    problem+json; `caller` is the dependency that authenticates (default `bearer_caller`)."""
    if not roles or any(role not in ROLES for role in roles):
        raise ValueError(f"roles must be among {ROLES}")
    allowed = frozenset(roles)

    async def caller_with_role(verified: Annotated[Caller, Depends(caller)]) -> Caller:
        if verified.role not in allowed:
            raise Forbidden("Your role may not do this.")
        return verified

    return caller_with_role
