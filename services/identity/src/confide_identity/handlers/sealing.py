"""Identity's personal data sealed under each person's `identity.profile` data key: the profile
(email, display name, phone and address, as one JSON document), the password hash and the TOTP
secret. Shredding that one key erases them all, in the event store and the read model alike."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from confide_toolkit.keyring import ERASED, Erased, Keyring, Tombstone
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity import domain
from confide_identity.store import AccountRecord, seal

Part = Literal["profile", "password", "totp"]
"""What a ciphertext holds; each is bound to its account and part, so none can stand in for
another."""


@dataclass(frozen=True)
class Profile:
    """A decrypted profile; every field is `ERASED` once the profile key is shredded."""

    email: str | Erased
    display_name: str | Erased
    phone: str | Erased | None
    address: str | Erased | None


def profile_document(
    email: str, display_name: str, phone: str | None, address: str | None
) -> bytes:
    """The plaintext of a profile, as it is sealed."""
    return json.dumps(
        {"email": email, "display_name": display_name, "phone": phone, "address": address}
    ).encode("utf-8")


def _record_id(account_id: UUID, part: Part) -> str:
    return f"account:{account_id}:{part}"


class ProfileSeal:
    """Seals and opens an account's personal data with the service's keyring."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def seal(
        self, conn: AsyncConnection, account_id: UUID, part: Part, plaintext: bytes
    ) -> domain.Sealed:
        """`plaintext` encrypted under the account's profile key, as a domain event carries it
        (the key is created on first use, in the caller's transaction)."""
        ciphertext = await self.keyring.encrypt(
            conn, account_id, domain.PROFILE_CATEGORY, _record_id(account_id, part), plaintext
        )
        return seal(ciphertext)

    def open(self, account: AccountRecord, part: Part, ciphertext: bytes) -> bytes | Erased:
        """One ciphertext of the account's record, opened with the key read with it."""
        return self.keyring.open(
            account.data_key,
            account.account_id,
            domain.PROFILE_CATEGORY,
            _record_id(account.account_id, part),
            ciphertext,
        )

    def profile(self, account: AccountRecord) -> Profile:
        """The account's profile, decrypted (every field `ERASED` after shredding)."""
        opened = self.open(account, "profile", account.profile)
        if isinstance(opened, Erased):
            return Profile(ERASED, ERASED, ERASED, ERASED)
        fields = json.loads(opened)
        return Profile(fields["email"], fields["display_name"], fields["phone"], fields["address"])

    async def shred(self, conn: AsyncConnection, account_id: UUID) -> Tombstone | None:
        """Destroy the account's profile key; None when identity never held one for it."""
        return await self.keyring.shred(conn, account_id, domain.PROFILE_CATEGORY)
