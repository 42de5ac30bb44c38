"""How each of identity's refusals answers over HTTP: the one place they meet problem types.

A 422 names the refused field by its place in the request (`body.email`), as request
validation does; the 401s carry `WWW-Authenticate: Bearer`; a lock answers 429 with
`Retry-After`."""

from __future__ import annotations

from typing import Final

from confide_toolkit.problem import ProblemType, ProblemTypes

from confide_identity import domain
from confide_identity.tokens import SigningKeyUnavailable

_BEARER: Final = {"WWW-Authenticate": "Bearer"}

PROBLEM_TYPES: Final[ProblemTypes] = {
    domain.InvalidCredentials: ProblemType(
        401, "Invalid credentials", slug="invalid-credentials", headers=_BEARER
    ),
    domain.TotpRequired: ProblemType(
        401, "Second factor required", slug="totp-required", headers=_BEARER
    ),
    domain.InvalidTotpCode: ProblemType(
        401, "Invalid second factor", slug="invalid-totp-code", headers=_BEARER
    ),
    domain.InvalidRefreshToken: ProblemType(
        401, "Invalid refresh token", slug="invalid-refresh-token", headers=_BEARER
    ),
    # 429, not 423: a throttled sign-in is "too many requests, retry after" (RFC 6585), what
    # clients and gateways expect; 423 is WebDAV's locked resource.
    domain.SignInLocked: ProblemType(429, "Sign-in locked", slug="sign-in-locked"),
    domain.TooManySignInAttempts: ProblemType(
        429, "Too many sign-in attempts", slug="too-many-sign-in-attempts"
    ),
    domain.EmailAlreadyRegistered: ProblemType(
        409, "Email already registered", slug="email-already-registered"
    ),
    domain.PasswordRefused: ProblemType(422, "Password refused", slug="password-refused"),
    domain.InvalidField: ProblemType(422, "Validation error", slug="validation-error"),
    domain.AccountNotActive: ProblemType(409, "Account closed", slug="account-not-active"),
    domain.TotpAlreadyEnabled: ProblemType(
        409, "Second factor already enabled", slug="totp-already-enabled"
    ),
    domain.NoTotpEnrolment: ProblemType(409, "No enrolment to confirm", slug="no-totp-enrolment"),
    SigningKeyUnavailable: ProblemType(
        503, "Signing key not yet available", slug="signing-key-unavailable"
    ),
}
"""Identity's refusals and their answers (`ConcurrentChange` answers 409 `concurrent-change`
in every service, by the toolkit)."""
