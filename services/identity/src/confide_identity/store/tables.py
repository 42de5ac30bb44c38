"""Identity's tables (the docstring of `store` says what each holds and what never does)."""

from __future__ import annotations

from confide_toolkit.database import NAMING_CONVENTION
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    Uuid,
)

metadata = MetaData(naming_convention=NAMING_CONVENTION)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", Uuid, primary_key=True),
    Column("role", Text, nullable=False),
    Column("status", Text, nullable=False),
    # Unique while the account exists: one email, one account. Cleared by shredding, which
    # frees the address and leaves no link between it and the erased account.
    Column("email_index", Text, nullable=True, unique=True),
    Column("profile", LargeBinary, nullable=False),
    Column("password_hash", LargeBinary, nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
    Column("totp_pending", LargeBinary, nullable=True),
    Column("totp_secret", LargeBinary, nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("version", Integer, nullable=False),
)
"""The read model of the account streams (rebuildable from the event store)."""

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", Uuid, primary_key=True),
    Column("account_id", Uuid, nullable=False, index=True),
    Column("auth_time", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("revoked_because", Text, nullable=True),
)
"""A sign-in: one refresh-token family and the access tokens issued from it."""

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    Column("session_id", Uuid, ForeignKey("sessions.session_id"), nullable=False, index=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("spent_at", DateTime(timezone=True), nullable=True),
)

sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    # "email:<keyed hash>" or "address:<keyed hash>": never the email or the IP itself.
    Column("throttle_key", Text, primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_started_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)

totp_steps = Table(
    "totp_steps",
    metadata,
    Column("account_id", Uuid, primary_key=True),
    Column("last_step", BigInteger, nullable=False),
)
"""The last accepted TOTP time step per account, so a code is never accepted twice."""

identity_signing_keys = Table(
    "identity_signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_private_key", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("activates_at", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=True),
    Index("ix_identity_signing_keys_activates_at", "activates_at"),
)
"""Identity's private signing keys, wrapped by the KEK; their public halves go out as events."""

service_secrets = Table(
    "service_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_secret", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""Keys of identity's own (the blind-index and address-hash keys), wrapped by the KEK."""
