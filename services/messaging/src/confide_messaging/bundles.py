"""Disclosure bundles: the disclosed records as JSON, sealed under a one-time key.

The key is generated for one bundle and never stored: it travels only in the download token
given to the client, and the service keeps the token's SHA-256 to find the bundle. A bundle is
AES-256-GCM with the disclosure id as associated data, so a sealed bundle moved to another
disclosure does not open."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


@dataclass(frozen=True)
class SealedBundle:
    token: str
    """The one-time download token: the bundle's key, base64url (shown once, never stored)."""
    token_sha256: bytes
    sealed: bytes


def seal_bundle(disclosure_id: UUID, bundle: bytes) -> SealedBundle:
    """`bundle` sealed under a fresh one-time key, with the token that opens it."""
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE_BYTES)
    sealed = nonce + AESGCM(key).encrypt(nonce, bundle, disclosure_id.bytes)
    token = base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
    return SealedBundle(token, token_digest(key), sealed)


def token_key(token: str) -> bytes | None:
    """The key a download token carries, or None if it is not a token at all."""
    try:
        key = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


def token_digest(key: bytes) -> bytes:
    """What the service keeps of a token: its SHA-256."""
    return hashlib.sha256(key).digest()


def open_bundle(disclosure_id: UUID, key: bytes, sealed: bytes) -> bytes | None:
    """The bundle's JSON, or None if `key` does not open it for this disclosure."""
    try:
        return AESGCM(key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], disclosure_id.bytes
        )
    except InvalidTag:
        return None
