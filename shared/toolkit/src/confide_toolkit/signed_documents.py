"""Documents a service signs with its own Ed25519 key, so that anyone can verify them offline:
compact JWS (RFC 7515, `alg: EdDSA`, the document's own `typ`, `kid` in the header), checked
against the public keys the service serves as a JWKS document.

The private keys are kept in a table of the service (`signing_key_table`), sealed by the
service's keyring under a data key of a pseudo-subject of its own: sealed bytes are bound to
the key's kid, and a KEK rotation re-wraps them with every other data key, so no key material
is ever stored in plaintext nor left behind by a rotation. Every key ever used stays published
(old documents must stay verifiable).

Retention signs its erasure certificates this way; consent's receipts follow the same scheme
with a copy of their own (`confide_consent.store.ReceiptKeys`) that can move onto this module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import Column, DateTime, LargeBinary, MetaData, String, Table, func, insert, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_toolkit.auth import key_from_jwk, public_jwk
from confide_toolkit.clock import Clock
from confide_toolkit.keyring import Erased, Keyring

ALGORITHM: Final = "EdDSA"

CURRENT_KEY_TTL: Final = 60.0
"""Seconds a replica keeps signing with the key it last read as current before reading again."""


class DocumentInvalid(Exception):
    """The document does not verify: altered, malformed, of another type, or signed by a key
    that is not among the published ones."""


def signing_key_table(name: str, metadata: MetaData) -> Table:
    """The table of a service's document signing keys (public JWK in clear, private half sealed
    by the keyring), in the service's own metadata."""
    return Table(
        name,
        metadata,
        Column("kid", String(64), primary_key=True),
        Column("public_jwk", JSONB, nullable=False),
        Column("sealed_private_key", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("retired_at", DateTime(timezone=True), nullable=True),
    )


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey


class DocumentSigningKeys:
    """A service's keys for one kind of signed document: created on first use (once, whatever
    the replicas), sealed at rest, unsealed once per process."""

    def __init__(self, table: Table, keyring: Keyring, clock: Clock, *, purpose: str) -> None:
        """`purpose` names the documents (e.g. `retention.certificates`): it makes the sealing
        pseudo-subject, the keyring category, the creation lock and the kids' prefix."""
        self._table = table
        self._keyring = keyring
        self._clock = clock
        self._purpose = purpose
        self._subject = uuid.uuid5(uuid.NAMESPACE_URL, f"https://confide.dev/{purpose}")
        self._category = f"{purpose}.signing_key"
        self._unsealed: dict[str, Ed25519PrivateKey] = {}
        self._current: tuple[SigningKey, float] | None = None

    async def current(self, conn: AsyncConnection) -> SigningKey:
        """The key new documents are signed with, creating it if there is none yet."""
        if self._current is not None and time.monotonic() < self._current[1]:
            return self._current[0]
        row = await self._current_row(conn)
        if row is None:
            # Replicas starting together must not each create a key: serialise creation.
            await conn.execute(
                select(func.pg_advisory_xact_lock(func.hashtextextended(self._purpose, 0)))
            )
            row = await self._current_row(conn)
        if row is None:
            # Not remembered: the key exists only once this transaction commits.
            return await self._create(conn)
        key = await self._unseal(conn, row)
        self._current = (key, time.monotonic() + CURRENT_KEY_TTL)
        return key

    async def jwks(self, conn: AsyncConnection) -> dict[str, list[dict[str, Any]]]:
        """Every public key documents were ever signed with, as a JWKS document."""
        rows = await conn.execute(
            select(self._table.c.public_jwk).order_by(self._table.c.created_at)
        )
        return {"keys": [dict(row.public_jwk) for row in rows]}

    async def _current_row(self, conn: AsyncConnection) -> Any:
        return (
            await conn.execute(
                select(self._table)
                .where(self._table.c.retired_at.is_(None))
                .order_by(self._table.c.created_at.desc())
                .limit(1)
            )
        ).first()

    async def _unseal(self, conn: AsyncConnection, row: Any) -> SigningKey:
        private_key = self._unsealed.get(row.kid)
        if private_key is None:
            plaintext = await self._keyring.decrypt(
                conn, self._subject, self._category, row.kid, bytes(row.sealed_private_key)
            )
            if isinstance(plaintext, Erased):
                raise RuntimeError(f"the {self._purpose} signing keys were shredded")
            private_key = Ed25519PrivateKey.from_private_bytes(plaintext)
            self._unsealed[row.kid] = private_key
        return SigningKey(row.kid, private_key)

    async def _create(self, conn: AsyncConnection) -> SigningKey:
        private_key = Ed25519PrivateKey.generate()
        kid = f"{self._purpose.replace('.', '-')}-{uuid.uuid4().hex[:12]}"[-64:]
        raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        sealed = await self._keyring.encrypt(conn, self._subject, self._category, kid, raw)
        now: datetime = self._clock.now()
        await conn.execute(
            insert(self._table).values(
                kid=kid,
                public_jwk=cast(dict[str, Any], public_jwk(private_key, kid)),
                sealed_private_key=sealed,
                created_at=now,
            )
        )
        self._unsealed[kid] = private_key
        return SigningKey(kid, private_key)


def sign_document(claims: Mapping[str, Any], key: SigningKey, typ: str) -> str:
    """The document as a compact JWS signed with `key`, its header naming `typ` and the kid."""
    return jwt.encode(
        dict(claims), key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": typ}
    )


def verify_document(jws: str, jwks: Mapping[str, Any], typ: str) -> dict[str, Any]:
    """The claims of a document of type `typ` whose signature verifies under one of the keys of
    `jwks` (`{"keys": [...]}`); raises `DocumentInvalid` otherwise. Needs nothing but the JWKS:
    a document can be checked offline, long after it was issued."""
    try:
        header = jwt.get_unverified_header(jws)
    except jwt.PyJWTError as error:
        raise DocumentInvalid("not a JWS") from error
    if header.get("alg") != ALGORITHM or header.get("typ") != typ:
        raise DocumentInvalid(f"not a {typ} document")
    jwk = next((k for k in jwks.get("keys", ()) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise DocumentInvalid("signed by an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            jws,
            key_from_jwk(jwk),
            algorithms=[ALGORITHM],
            # A signed document is proof of something past: it does not expire.
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except (jwt.PyJWTError, ValueError) as error:
        raise DocumentInvalid("the signature does not verify") from error
    return claims


def document_claims(jws: str) -> dict[str, Any]:
    """The claims of a document without checking its signature: for display of what this
    service itself stored; anyone relying on it calls `verify_document`."""
    claims: dict[str, Any] = jwt.decode(jws, options={"verify_signature": False})
    return claims
