"""Identity's service layer: one function per command or consumed event, in one module per topic.

- `accounts`: registration, reading the account, profile changes, password change, closing,
  and shredding the profile when retention says so;
- `sessions`: sign-in, refresh-token families, sign-out and the revocation check;
- `revocation`: ending sessions and announcing it (`SessionsRevoked`) to every service;
- `throttling`: counting failed sign-ins and locking emails and client addresses;
- `totp`: enrolling and confirming the second factor, and matching its codes;
- `sealing`: personal data sealed under each person's `identity.profile` data key.

Each handler takes the `Dependencies` below and the command's data; the routes and the
consumers only parse, call one handler (`sessions.sign_in(deps, ...)`), and answer. Handlers
raise the domain's exceptions (`domain.IdentityError`), which `problems.py` maps to HTTP.
Every SQL statement is in `store.py`, behind the repositories held here, so a unit test can
hand the handlers in-memory stand-ins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from confide_toolkit.clock import Clock
from confide_toolkit.outbox import Outbox
from sqlalchemy.ext.asyncio import AsyncEngine

from confide_identity.handlers.sealing import ProfileSeal
from confide_identity.passwords import PasswordHasher
from confide_identity.store import Accounts, Sessions, SignInFailures, TotpSteps
from confide_identity.tokens import ServiceSecrets, SigningKeys


@dataclass(frozen=True)
class Dependencies:
    """What the handlers work with; built once in `app.py`."""

    engine: AsyncEngine
    clock: Clock
    outbox: Outbox
    accounts: Accounts
    sessions: Sessions
    sign_in_failures: SignInFailures
    totp_steps: TotpSteps
    sealing: ProfileSeal
    hasher: PasswordHasher
    secrets: ServiceSecrets
    signing_keys: SigningKeys
    access_token_ttl: timedelta
    session_ttl: timedelta
    account_failure_limit: int
    address_failure_limit: int
    failure_window: timedelta
    lockout: timedelta
