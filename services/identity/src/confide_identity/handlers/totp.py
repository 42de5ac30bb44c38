"""The second factor: TOTP (RFC 6238) enrolment, its confirmation with a first code, and the
matching of codes, each time step accepted once per account."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from confide_toolkit.commands import run_command
from confide_toolkit.keyring import Erased
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from sqlalchemy.ext.asyncio import AsyncConnection

from confide_identity.domain import AccountNotActive, InvalidField, NoTotpEnrolment
from confide_identity.handlers import Dependencies
from confide_identity.handlers.accounts import account_for_change, account_record
from confide_identity.tokens import b32_secret

DIGITS = 6
STEP_SECONDS = 30
_SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1
_ISSUER = "Confide"


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, DIGITS, SHA1(), STEP_SECONDS)  # noqa: S303 (RFC 6238 default)


def matching_step(secret: bytes, code: str, now: datetime) -> int | None:
    """The time step whose code is `code` (allowing one step of clock drift either way), or
    None when no step around `now` has that code."""
    totp = _totp(secret)
    current = int(now.timestamp()) // STEP_SECONDS
    for step in (current, current - 1, current + 1):
        expected = totp.generate(step * STEP_SECONDS)
        if hmac.compare_digest(expected, code.encode("ascii", "replace")):
            return step
    return None


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    otpauth_uri: str


async def start_totp_enrolment(deps: Dependencies, account_id: UUID) -> TotpEnrolment:
    """A new TOTP secret, stored encrypted and not enforced until confirmed with a code."""
    raw = secrets.token_bytes(_SECRET_BYTES)

    async def work(conn: AsyncConnection) -> str | Erased:
        account = await account_for_change(deps, conn, account_id)
        record = await account_record(deps, conn, account_id)
        sealed = await deps.sealing.seal(conn, account_id, "totp", raw)
        account.start_totp_enrolment(sealed, deps.clock.now())
        await deps.accounts.save(conn, account)
        return deps.sealing.profile(record).email

    email = await run_command(deps.engine, work)
    label = email if isinstance(email, str) else str(account_id)
    uri = _totp(raw).get_provisioning_uri(label, _ISSUER)
    return TotpEnrolment(secret=b32_secret(raw), otpauth_uri=uri)


async def confirm_totp(deps: Dependencies, account_id: UUID, code: str) -> None:
    """Turn the second factor on once the person proves their app has the secret."""

    async def work(conn: AsyncConnection) -> None:
        account = await account_for_change(deps, conn, account_id)
        # Decided first: no enrolment, or one already enabled, is refused whatever the code.
        account.confirm_totp(deps.clock.now())
        record = await account_record(deps, conn, account_id)
        if record.totp_pending is None:
            raise NoTotpEnrolment()
        secret = deps.sealing.open(record, "totp", record.totp_pending)
        if isinstance(secret, Erased):
            raise AccountNotActive()
        step = matching_step(secret, code, deps.clock.now())
        if step is None or not await deps.totp_steps.accept(conn, account_id, step):
            raise InvalidField("code", "The code is incorrect or was already used.", "totp")
        await deps.accounts.save(conn, account)

    await run_command(deps.engine, work)
