"""Identity's tables, the account read model (a projection of the account events, updated in
the transaction of each append), the repositories of the accounts, sessions, sign-in failures
and TOTP steps, and the statements of the signing keys and service secrets: every SQL
statement of identity.

Nothing here holds personal data in plaintext: profile, password hash and TOTP secret are
keyring ciphertexts; emails and client addresses appear only as keyed hashes; refresh tokens
only as SHA-256 digests; signing keys and service secrets only wrapped by the KEK.

- `tables`: the tables;
- `account_streams`: the accounts' repository over the event store and their read model;
- `session_records`: sessions and refresh tokens;
- `sign_ins`: failed sign-ins counted per keyed hash, and the TOTP steps used;
- `keys`: the signing keys and service secrets."""

from confide_identity.store.account_streams import (
    EMAIL_INDEX_UNIQUE,
    AccountRecord,
    Accounts,
    project_account,
    seal,
    unseal,
)
from confide_identity.store.keys import (
    add_signing_key,
    keep_service_secret,
    lock_signing_key_rotation,
    newest_signing_key,
    retire_signing_key,
    rewrap_service_secret,
    signing_key_in_use,
)
from confide_identity.store.session_records import (
    PresentedRefreshToken,
    SessionLifetime,
    Sessions,
)
from confide_identity.store.sign_ins import (
    FailureCount,
    SignInFailures,
    TotpSteps,
)
from confide_identity.store.tables import (
    accounts,
    identity_signing_keys,
    metadata,
    refresh_tokens,
    service_secrets,
    sessions,
    sign_in_failures,
    totp_steps,
)

__all__ = [
    "EMAIL_INDEX_UNIQUE",
    "AccountRecord",
    "Accounts",
    "FailureCount",
    "PresentedRefreshToken",
    "SessionLifetime",
    "Sessions",
    "SignInFailures",
    "TotpSteps",
    "accounts",
    "add_signing_key",
    "identity_signing_keys",
    "keep_service_secret",
    "lock_signing_key_rotation",
    "metadata",
    "newest_signing_key",
    "project_account",
    "refresh_tokens",
    "retire_signing_key",
    "rewrap_service_secret",
    "seal",
    "service_secrets",
    "sessions",
    "sign_in_failures",
    "signing_key_in_use",
    "totp_steps",
    "unseal",
]
