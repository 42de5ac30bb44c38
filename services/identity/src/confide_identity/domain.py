"""The account aggregate: a person's account as the stream of its domain events, the rules
that decide which events a command produces, the password policy, and every refusal of
identity's commands (plain exceptions that know nothing of HTTP). No I/O here.

Personal data never appears in a domain event in plaintext: the handlers encrypt the profile,
the password hash and the TOTP secret under the person's `identity.profile` data key and the
events carry those ciphertexts (base64), so shredding that one key erases every copy, in the
event store and in the read model alike."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar, Literal
from uuid import UUID

from confide_toolkit.auth import Role
from confide_toolkit.domain_events import DomainEvent

PROFILE_CATEGORY = "identity.profile"
"""The one personal-data category identity keeps: profile, password hash, TOTP secret."""

Sealed = str
"""A keyring ciphertext, base64-encoded so that it fits in a JSON event."""

AccountStatus = Literal["active", "closed", "erased"]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128


# --- errors -----------------------------------------------------------------------------------
# Every refusal of identity, as plain exceptions: `problems.py` says once how each answers over
# HTTP. Messages name no personal data. What a refusal needs to say beyond its message it says
# through plain attributes: `field` and `field_errors` (the command's fields it refuses, with a
# message and a kind each), `retry_after` (how long until trying again can succeed).


class IdentityError(Exception):
    """A command identity refuses."""


class InvalidCredentials(IdentityError):
    """The one answer for an unknown email, a wrong password and an unusable account."""

    def __init__(self) -> None:
        super().__init__("The email or password is incorrect.")


class TotpRequired(IdentityError):
    def __init__(self) -> None:
        super().__init__("This account needs a code from its authenticator app (totp_code).")


class InvalidTotpCode(IdentityError):
    def __init__(self) -> None:
        super().__init__("The authenticator code is incorrect or was already used.")


class InvalidRefreshToken(IdentityError):
    def __init__(self) -> None:
        super().__init__("The refresh token is invalid, expired or already used.")


class SignInLocked(IdentityError):
    """Too many failed sign-ins for one email (known or not); `retry_after` until the lock ends."""

    def __init__(self, retry_after: timedelta) -> None:
        super().__init__("Too many failed sign-ins; try again later.")
        self.retry_after = retry_after


class TooManySignInAttempts(IdentityError):
    """Too many failed sign-ins from one client address; `retry_after` until it may try again."""

    def __init__(self, retry_after: timedelta) -> None:
        super().__init__("Too many failed sign-ins from this address; try again later.")
        self.retry_after = retry_after


class EmailAlreadyRegistered(IdentityError):
    def __init__(self) -> None:
        super().__init__("This email cannot be used for a new account.")


class InvalidField(IdentityError):
    """One field of a command holds a value identity refuses (an email that is no address, a
    wrong current password, a wrong code); `field` is its name in the command."""

    def __init__(self, field: str, message: str, kind: str) -> None:
        super().__init__("The request has invalid fields.")
        self.field = field
        self.kind = kind
        self.field_errors = [(field, message, kind)]


@dataclass(frozen=True)
class PolicyViolation:
    """Why a password is refused, for a 422 naming the field."""

    message: str
    kind: str


class PasswordRefused(IdentityError):
    """The password in `field` breaks the password policy, for the reasons listed."""

    def __init__(self, field: str, violations: Sequence[PolicyViolation]) -> None:
        super().__init__("The password does not meet the password policy.")
        self.field = field
        self.field_errors = [(field, v.message, v.kind) for v in violations]


class AccountError(IdentityError):
    """A command the account aggregate refuses."""


class AccountNotActive(AccountError):
    def __init__(self) -> None:
        super().__init__("The account is closed.")


class TotpAlreadyEnabled(AccountError):
    def __init__(self) -> None:
        super().__init__("A TOTP second factor is already enabled for this account.")


class NoTotpEnrolment(AccountError):
    def __init__(self) -> None:
        super().__init__("Start a TOTP enrolment before confirming it.")


class InvalidEmail(ValueError):
    """The text is not an email address we accept."""


# --- domain events ----------------------------------------------------------------------------


class AccountEvent(DomainEvent):
    stream_type: ClassVar[str] = "account"


class AccountRegistered(AccountEvent):
    event_type = "AccountRegistered"
    schema_version = 1
    account_id: UUID
    role: Role
    email_index: str
    """Keyed hash of the normalised email: finds the account at sign-in without decrypting."""
    profile: Sealed
    password_hash: Sealed
    registered_at: datetime


class ProfileUpdated(AccountEvent):
    event_type = "ProfileUpdated"
    schema_version = 1
    profile: Sealed
    updated_at: datetime


class PasswordChanged(AccountEvent):
    event_type = "PasswordChanged"
    schema_version = 1
    password_hash: Sealed
    changed_at: datetime


class PasswordRehashed(AccountEvent):
    """The same password, hashed again with stronger parameters; its age does not change."""

    event_type = "PasswordRehashed"
    schema_version = 1
    password_hash: Sealed


class TotpEnrolmentStarted(AccountEvent):
    event_type = "TotpEnrolmentStarted"
    schema_version = 1
    secret: Sealed
    started_at: datetime


class TotpEnabled(AccountEvent):
    event_type = "TotpEnabled"
    schema_version = 1
    enabled_at: datetime


class AccountClosed(AccountEvent):
    event_type = "AccountClosed"
    schema_version = 1
    closed_at: datetime


class ProfileShredded(AccountEvent):
    """The profile data key was destroyed: every ciphertext of this account is unreadable."""

    event_type = "ProfileShredded"
    schema_version = 1
    key_id: UUID
    shredded_at: datetime


ACCOUNT_EVENTS: tuple[type[AccountEvent], ...] = (
    AccountRegistered,
    ProfileUpdated,
    PasswordChanged,
    PasswordRehashed,
    TotpEnrolmentStarted,
    TotpEnabled,
    AccountClosed,
    ProfileShredded,
)


# --- the aggregate ----------------------------------------------------------------------------


@dataclass
class Account:
    """An account rebuilt from its events. Commands check the rules, then record and apply new
    events; `pending` holds what is to be appended after `version`, the version of the stream
    the account was loaded at (0 for an account being opened)."""

    account_id: UUID
    role: Role
    email_index: str | None
    profile: Sealed
    password_hash: Sealed
    password_changed_at: datetime
    registered_at: datetime
    status: AccountStatus = "active"
    totp_pending: Sealed | None = None
    totp_secret: Sealed | None = None
    closed_at: datetime | None = None
    version: int = 0
    pending: list[AccountEvent] = field(default_factory=list)

    @property
    def mfa_enabled(self) -> bool:
        return self.totp_secret is not None

    @classmethod
    def register(
        cls,
        account_id: UUID,
        role: Role,
        email_index: str,
        profile: Sealed,
        password_hash: Sealed,
        now: datetime,
    ) -> Account:
        """A new account, its registration pending."""
        registered = AccountRegistered(
            account_id=account_id,
            role=role,
            email_index=email_index,
            profile=profile,
            password_hash=password_hash,
            registered_at=now,
        )
        account = cls._opened_by(registered)
        account.pending.append(registered)
        return account

    @classmethod
    def replay(cls, events: Iterable[DomainEvent], version: int) -> Account:
        """The account as its recorded events left it, at stream `version`; the first event
        must be its registration."""
        account: Account | None = None
        for event in events:
            if account is None:
                if not isinstance(event, AccountRegistered):
                    raise ValueError("an account stream starts with AccountRegistered")
                account = cls._opened_by(event)
            else:
                account._apply(event)
        if account is None:
            raise ValueError("an empty stream is no account")
        account.version = version
        return account

    @classmethod
    def _opened_by(cls, event: AccountRegistered) -> Account:
        return cls(
            account_id=event.account_id,
            role=event.role,
            email_index=event.email_index,
            profile=event.profile,
            password_hash=event.password_hash,
            password_changed_at=event.registered_at,
            registered_at=event.registered_at,
        )

    # -- commands ---------------------------------------------------------------------------

    def update_profile(self, profile: Sealed, now: datetime) -> None:
        self._require_active()
        self._record(ProfileUpdated(profile=profile, updated_at=now))

    def change_password(self, password_hash: Sealed, now: datetime) -> None:
        self._require_active()
        self._record(PasswordChanged(password_hash=password_hash, changed_at=now))

    def rehash_password(self, password_hash: Sealed) -> None:
        self._require_active()
        self._record(PasswordRehashed(password_hash=password_hash))

    def start_totp_enrolment(self, secret: Sealed, now: datetime) -> None:
        """A new secret replaces an unconfirmed one; an enabled factor is never replaced
        silently (that would let a stolen session disable the second factor)."""
        self._require_active()
        if self.mfa_enabled:
            raise TotpAlreadyEnabled()
        self._record(TotpEnrolmentStarted(secret=secret, started_at=now))

    def confirm_totp(self, now: datetime) -> None:
        self._require_active()
        if self.mfa_enabled:
            raise TotpAlreadyEnabled()
        if self.totp_pending is None:
            raise NoTotpEnrolment()
        self._record(TotpEnabled(enabled_at=now))

    def close(self, now: datetime) -> None:
        self._require_active()
        self._record(AccountClosed(closed_at=now))

    def shred(self, key_id: UUID, now: datetime) -> None:
        """Idempotent: a redelivered erasure records nothing twice."""
        if self.status == "erased":
            return
        self._record(ProfileShredded(key_id=key_id, shredded_at=now))

    # -- queries ----------------------------------------------------------------------------

    def password_age_days(self, now: datetime) -> int:
        """Days since the password was set: apps nudge, nobody forces rotation (NIST 800-63B)."""
        return max(0, (now - self.password_changed_at).days)

    # -- applying events --------------------------------------------------------------------

    def _require_active(self) -> None:
        if self.status != "active":
            raise AccountNotActive()

    def _record(self, event: AccountEvent) -> None:
        self._apply(event)
        self.pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        """Move the state past one event (the read model does the same, in SQL)."""
        match event:
            case ProfileUpdated():
                self.profile = event.profile
            case PasswordChanged():
                self.password_hash = event.password_hash
                self.password_changed_at = event.changed_at
            case PasswordRehashed():
                self.password_hash = event.password_hash
            case TotpEnrolmentStarted():
                self.totp_pending = event.secret
            case TotpEnabled():
                self.totp_secret, self.totp_pending = self.totp_pending, None
            case AccountClosed():
                self.status = "closed"
                self.closed_at = event.closed_at
            case ProfileShredded():
                self.status = "erased"
                self.email_index = None
            case _:
                raise ValueError(f"{type(event).__name__} does not apply to an account")


# --- email and password rules -----------------------------------------------------------------

# Deliberately simple: one @, a dotted domain, no spaces or control characters. Whether the
# address really exists is a question only a confirmation email could answer.
_EMAIL = re.compile(
    r"^[^\s@\"(),:;<>\[\\\]]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)


def normalise_email(raw: str) -> str:
    """The canonical form of an email: trimmed, NFKC, lower-cased, so that one person's
    address written two ways is one account. Raises `InvalidEmail`."""
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidEmail("not an email address")
    return email


_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)


def _cores(password: str) -> set[str]:
    """The forms of a password a guesser tries first: as typed, lower-cased, without the digits
    and symbols people append or prepend, and with common letter substitutions undone."""
    lowered = password.lower()
    stripped = re.sub(r"^[\W\d_]+|[\W\d_]+$", "", lowered)
    return {lowered, stripped, lowered.translate(_LEET), stripped.translate(_LEET)} - {""}


def password_violations(
    password: str, email: str | None, common_passwords: Container[str]
) -> list[PolicyViolation]:
    """Why a password is refused (empty when it is acceptable). Never quotes the password.

    NIST SP 800-63B: a minimum length, a check against common and breached passwords and
    context words (the email), and no composition rules or forced rotation."""
    violations: list[PolicyViolation] = []
    length = len(password)
    if length < MIN_PASSWORD_LENGTH:
        violations.append(
            PolicyViolation(f"Use at least {MIN_PASSWORD_LENGTH} characters.", "password_too_short")
        )
    if length > MAX_PASSWORD_LENGTH:
        violations.append(
            PolicyViolation(f"Use at most {MAX_PASSWORD_LENGTH} characters.", "password_too_long")
        )
    if any(core in common_passwords for core in _cores(password)):
        violations.append(
            PolicyViolation(
                "This password is too common or appears in known data breaches.",
                "password_common",
            )
        )
    elif len(set(password)) < 5:
        violations.append(
            PolicyViolation("Use more than a few different characters.", "password_repetitive")
        )
    if email:
        lowered = password.lower()
        local_part = email.split("@", 1)[0]
        if email in lowered or (len(local_part) >= 4 and local_part in lowered):
            violations.append(
                PolicyViolation("The password must not contain your email.", "password_has_email")
            )
    return violations
