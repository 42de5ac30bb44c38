"""Identity's HTTP API (the identity section of the handbook's API.md): parse, authorise,
call one handler, answer."""

import sys
import unicodedata
from typing import Annotated, Literal
from uuid import UUID

from confide_toolkit.auth import Caller, CallerDependency, load_jwks
from confide_toolkit.keyring import Erased
from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from confide_identity.domain import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from confide_identity.handlers import Dependencies, accounts, sessions, totp


def _printable(value: str) -> str:
    # Control characters (newlines, NUL, bidi overrides) have no place in a name or address
    # and would corrupt whatever renders them. The message never quotes the value.
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in value):
        raise ValueError("must not contain control or formatting characters")
    return value


def _unprintable_class(allowed: str = "") -> str:
    # The characters `_printable` refuses, as a regular-expression class (ranges of the actual
    # characters), so that the document says what the server refuses.
    refused = [
        code
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in {"Cc", "Cf"} and chr(code) not in allowed
    ]
    ranges: list[tuple[int, int]] = []
    for code in refused:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)


def _printable_pattern(allowed: str = "") -> str:
    # Only printable characters, at least one of them not a space (the value is stripped).
    unprintable = _unprintable_class(allowed)
    return f"^[^{unprintable}]*[^{unprintable}\\s][^{unprintable}]*$"


def _stripped(value: str) -> str:
    # Stripped after the length is checked on what was sent, as the document's maxLength
    # counts it; a value of spaces only is refused, as the document's pattern says.
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


DisplayName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    AfterValidator(_stripped),
    AfterValidator(_printable),
    Field(json_schema_extra={"pattern": _printable_pattern()}),
]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9 ()./-]{6,24}$")]
Address = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500),
    AfterValidator(_stripped),
    AfterValidator(lambda v: _printable(v.replace("\n", " "))),
    Field(json_schema_extra={"pattern": _printable_pattern(allowed="\n")}),
]
Email = Annotated[str, StringConstraints(min_length=3, max_length=320)]
# A new account's email, checked here exactly as the document states it, so that what the
# schema allows identity accepts: ASCII, one @, a dotted domain (a subset of what
# `domain.normalise_email` accepts, and unchanged by its NFKC and lower-casing; spaces
# around it are trimmed there). Signing in
# keeps the looser `Email`: an address that cannot exist answers 401 like any wrong one.
NewEmail = Annotated[
    str,
    StringConstraints(
        max_length=254,
        pattern=r"^\s*[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+\s*$",
    ),
]
# Long enough for any passphrase, short enough that nobody hashes megabytes with Argon2id.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
# A new password: the document states the policy's lengths; what it cannot state (a breached
# or repetitive password, one containing the email) answers 422 password-refused.
NewPassword = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1024),
    Field(
        json_schema_extra={"minLength": MIN_PASSWORD_LENGTH, "maxLength": MAX_PASSWORD_LENGTH},
        description=f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters, not a common "
        "or breached password, at least 5 different characters, not containing the email.",
    ),
]
TotpCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Registration(_Body):
    email: NewEmail
    password: NewPassword
    display_name: DisplayName
    role: Literal["client", "therapist"]


class AccountCreated(BaseModel):
    user_id: UUID


class Credentials(_Body):
    email: Email
    password: Password
    totp_code: TotpCode | None = None


class RefreshRequest(_Body):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (a scheme name)
    expires_in: int


class AccountResponse(BaseModel):
    user_id: UUID
    email: str | None = Field(description="null once the profile is erased")
    display_name: str | None
    role: str
    phone: str | None = None
    address: str | None = None
    mfa_enabled: bool
    password_age_days: int = Field(
        description="days since the password was set; no rotation is forced (NIST 800-63B)"
    )
    profile_erased: bool = False


class ProfileChanges(_Body):
    display_name: DisplayName | None = None
    phone: Phone | None = None
    address: Address | None = None


class PasswordChange(_Body):
    current_password: Password
    new_password: NewPassword


class TotpEnrolmentResponse(BaseModel):
    secret: str
    otpauth_uri: str


class TotpConfirmation(_Body):
    code: TotpCode


def _tokens(pair: sessions.TokenPair, response: Response) -> TokenResponse:
    # RFC 6749 §5.1: token responses must not be cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


def _shown(value: str | Erased | None) -> str | None:
    return None if isinstance(value, Erased) else value


def _account(view: accounts.AccountView) -> AccountResponse:
    profile = view.profile
    return AccountResponse(
        user_id=view.user_id,
        email=_shown(profile.email),
        display_name=_shown(profile.display_name),
        role=view.role,
        phone=_shown(profile.phone),
        address=_shown(profile.address),
        mfa_enabled=view.mfa_enabled,
        password_age_days=view.password_age_days,
        profile_erased=isinstance(profile.email, Erased),
    )


def router(deps: Dependencies, current_caller: CallerDependency) -> APIRouter:
    """The routes of identity's API, bound to its dependencies and its token check."""
    api = APIRouter()
    SignedIn = Annotated[Caller, Depends(current_caller)]

    @api.post(
        "/v1/accounts",
        status_code=status.HTTP_201_CREATED,
        tags=["accounts"],
        summary="Register a client or therapist",
    )
    async def register(body: Registration) -> AccountCreated:
        user_id = await accounts.register_account(
            deps, body.email, body.password, body.display_name, body.role
        )
        return AccountCreated(user_id=user_id)

    @api.post("/v1/sessions", tags=["sessions"], summary="Sign in")
    async def sign_in(body: Credentials, request: Request, response: Response) -> TokenResponse:
        address = request.client.host if request.client else None
        pair = await sessions.sign_in(deps, body.email, body.password, body.totp_code, address)
        return _tokens(pair, response)

    @api.post("/v1/sessions/refresh", tags=["sessions"], summary="Rotate a refresh token")
    async def refresh(body: RefreshRequest, response: Response) -> TokenResponse:
        return _tokens(await sessions.refresh_session(deps, body.refresh_token), response)

    @api.delete(
        "/v1/sessions/current",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["sessions"],
        summary="Sign out",
    )
    async def sign_out(caller: SignedIn) -> None:
        await sessions.sign_out(deps, caller)

    @api.get("/v1/accounts/me", tags=["accounts"], summary="The signed-in person's account")
    async def me(caller: SignedIn) -> AccountResponse:
        return _account(await accounts.read_account(deps, caller.subject_id))

    @api.patch("/v1/accounts/me", tags=["accounts"], summary="Change profile fields")
    async def patch_me(body: ProfileChanges, caller: SignedIn) -> AccountResponse:
        changes = body.model_dump(exclude_unset=True)
        return _account(await accounts.update_profile(deps, caller.subject_id, changes))

    @api.post(
        "/v1/accounts/me/password",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["accounts"],
        summary="Change the password",
    )
    async def change_password(body: PasswordChange, caller: SignedIn) -> None:
        await accounts.change_password(deps, caller, body.current_password, body.new_password)

    @api.post("/v1/accounts/me/mfa/totp", tags=["mfa"], summary="Start a TOTP enrolment")
    async def start_totp(caller: SignedIn, response: Response) -> TotpEnrolmentResponse:
        enrolment = await totp.start_totp_enrolment(deps, caller.subject_id)
        response.headers["Cache-Control"] = "no-store"
        return TotpEnrolmentResponse(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri)

    @api.post(
        "/v1/accounts/me/mfa/totp/confirm",
        status_code=status.HTTP_204_NO_CONTENT,
        tags=["mfa"],
        summary="Turn TOTP on with a first code",
    )
    async def confirm_totp(body: TotpConfirmation, caller: SignedIn) -> None:
        await totp.confirm_totp(deps, caller.subject_id, body.code)

    @api.post(
        "/v1/accounts/me/close",
        status_code=status.HTTP_202_ACCEPTED,
        tags=["accounts"],
        summary="Close the account",
    )
    async def close(caller: SignedIn) -> dict[str, str]:
        await accounts.close_account(deps, caller.subject_id)
        return {"status": "closed"}

    @api.get("/.well-known/jwks.json", tags=["keys"], summary="Public keys of access tokens")
    async def jwks(response: Response) -> dict[str, list[dict[str, object]]]:
        async with deps.engine.connect() as conn:
            document = await load_jwks(conn, valid_at=deps.clock.now())
        response.headers["Cache-Control"] = "public, max-age=300"
        return document

    return api
