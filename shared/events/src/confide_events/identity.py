"""Events published by the identity service on `identity.events`."""

from typing import Annotated, ClassVar, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from confide_events.base import IntegrationEvent
from confide_events.shredding import SubjectDataShredded as _SubjectDataShredded
from confide_events.shredding import SubjectDataShreddedV1 as _SubjectDataShreddedV1
from confide_events.vocabulary import IdentityCategory, KeyId, UtcDateTime

PRODUCER = "identity"

Role = Literal["client", "therapist", "compliance"]


class UserRegistered(IntegrationEvent):
    """An account was opened. Its profile stays in identity, encrypted."""

    event_type: ClassVar[str] = "confide.identity.UserRegistered"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    role: Role
    registered_at: UtcDateTime


class AccountClosed(IntegrationEvent):
    """An account was closed; retention clocks for the person start now."""

    event_type: ClassVar[str] = "confide.identity.AccountClosed"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    closed_at: UtcDateTime


class PasswordChanged(IntegrationEvent):
    """A person's password was changed; their sessions elsewhere should end."""

    event_type: ClassVar[str] = "confide.identity.PasswordChanged"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    changed_at: UtcDateTime


SessionRevocationReason = Literal[
    "signed_out",
    "password_changed",
    "account_closed",
    "refresh_token_reused",
    "profile_erased",
]
"""Why identity ended sessions: a sign-out, a password change (every session but the one that
changed it), a closed account, a spent refresh token presented again (its family, i.e. its
session, is presumed stolen), or an erased profile."""


class SessionsRevoked(IntegrationEvent):
    """Identity ended sessions of a person: from `revoked_at` on, every service refuses the
    access tokens issued for them (a token names its session in its `sid` claim), without
    asking identity.

    No session revoked here issues another token, so `tokens_expire_by` (`revoked_at` plus the
    access-token lifetime) is when the last of their tokens expires: a read model of
    revocations may forget these sessions after it.
    """

    event_type: ClassVar[str] = "confide.identity.SessionsRevoked"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    session_ids: Annotated[tuple[UUID, ...], Field(min_length=1)]
    reason: SessionRevocationReason
    revoked_at: UtcDateTime
    tokens_expire_by: UtcDateTime


class AccountLocked(IntegrationEvent):
    """Too many failed sign-ins: the account is locked until `locked_until`."""

    event_type: ClassVar[str] = "confide.identity.AccountLocked"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    subject_id: UUID
    locked_at: UtcDateTime
    locked_until: UtcDateTime


Base64UrlEd25519Key = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$", min_length=43, max_length=43)
]


class PublicSigningKey(BaseModel):
    """A public Ed25519 key as a JWK (RFC 8037), used to verify access tokens."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: Base64UrlEd25519Key
    kid: KeyId
    use: Literal["sig"] = "sig"
    alg: Literal["EdDSA"] = "EdDSA"


class SigningKeyPublished(IntegrationEvent):
    """Identity will sign access tokens with this key; other services verify with it."""

    event_type: ClassVar[str] = "confide.identity.SigningKeyPublished"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    kid: KeyId
    public_jwk: PublicSigningKey
    published_at: UtcDateTime
    not_after: UtcDateTime | None = None

    @model_validator(mode="after")
    def _jwk_names_the_same_key(self) -> Self:
        if self.public_jwk.kid != self.kid:
            raise ValueError("public_jwk.kid must equal kid")
        return self

    def subject(self) -> str:
        """A signing key is about no person: its `kid` is the subject and partition key."""
        return self.kid


class SubjectDataShredded(_SubjectDataShredded):
    """Identity's answer to a `RetentionExpired` for one of its categories: the person's
    key destroyed (`shredded`), or no data held for them (`nothing_held`)."""

    event_type: ClassVar[str] = "confide.identity.SubjectDataShredded"
    schema_version: ClassVar[int] = 2
    producer: ClassVar[str] = PRODUCER

    category: IdentityCategory


# Version 1 of `SubjectDataShredded`, frozen: do not edit; read as version 2 through
# `shredding.upcast_subject_data_shredded_v1`. (Its docstring is its committed schema's.)
class SubjectDataShreddedV1(_SubjectDataShreddedV1):
    """Identity destroyed a person's profile key."""

    event_type: ClassVar[str] = "confide.identity.SubjectDataShredded"
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str] = PRODUCER

    category: IdentityCategory
