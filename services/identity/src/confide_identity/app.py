"""Wiring: settings, the service runtime, the handlers' dependencies, routers, consumers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from confide_events import identity as contract
from confide_toolkit.auth import Caller
from confide_toolkit.clock import Clock
from confide_toolkit.service import Service, run
from fastapi import FastAPI

from confide_identity import api, consumers
from confide_identity.handlers import Dependencies, sessions
from confide_identity.handlers.sealing import ProfileSeal
from confide_identity.passwords import PasswordHasher
from confide_identity.problems import PROBLEM_TYPES
from confide_identity.settings import IdentitySettings
from confide_identity.store import (
    Accounts,
    Sessions,
    SignInFailures,
    TotpSteps,
    accounts,
    project_account,
)
from confide_identity.tokens import ServiceSecrets, SigningKeys

MIGRATIONS = Path(__file__).parent / "migrations"

DESCRIPTION = (
    "Accounts, credentials, sessions, second factor and token-signing keys. "
    "Every other service verifies identity's access tokens with the public keys it "
    "publishes on identity.events, never by calling it."
)


def build(settings: IdentitySettings, clock: Clock | None = None) -> tuple[Service, Dependencies]:
    """The service runtime and the handlers' dependencies (also used by the operator CLI)."""
    service = Service(settings, migrations=MIGRATIONS, clock=clock)
    access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)
    deps = Dependencies(
        engine=service.engine,
        clock=service.clock,
        outbox=service.outbox,
        accounts=Accounts(service.clock),
        sessions=Sessions(),
        sign_in_failures=SignInFailures(),
        totp_steps=TotpSteps(),
        sealing=ProfileSeal(service.keyring),
        hasher=PasswordHasher(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_lanes,
            settings.argon2_max_concurrency,
        ),
        secrets=ServiceSecrets(service.engine, service.keyring.keks, service.clock),
        signing_keys=SigningKeys(
            service.engine,
            service.keyring.keks,
            service.outbox,
            service.clock,
            rotation=timedelta(seconds=settings.signing_key_rotation_seconds),
            publish_ahead=timedelta(seconds=settings.signing_key_publish_ahead_seconds),
            access_token_ttl=access_ttl,
            wait_for_first_key=settings.signing_key_wait_seconds,
        ),
        access_token_ttl=access_ttl,
        session_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        account_failure_limit=settings.account_failure_limit,
        address_failure_limit=settings.address_failure_limit,
        failure_window=timedelta(seconds=settings.failure_window_seconds),
        lockout=timedelta(seconds=settings.lockout_seconds),
    )
    return service, deps


def create_app(settings: IdentitySettings | None = None, clock: Clock | None = None) -> FastAPI:
    """Identity's FastAPI application."""
    settings = settings or IdentitySettings()  # from the environment
    service, deps = build(settings, clock)

    async def is_revoked(caller: Caller) -> bool:
        return await sessions.is_token_revoked(deps, caller.token_id)

    # Identity's own routes refuse tokens of ended sessions (sign-out, closure, reuse) from its
    # own sessions table, at once; other services learn of them from SessionsRevoked.
    service.check_token_revocation(is_revoked)
    # The first key (or a due successor) goes out at start, so it has reached every service
    # long before anyone signs in.
    service.after_start(deps.signing_keys.rotate_if_due)

    consumers.subscribe(service, deps)
    # Rebuilt from its own event store by `python -m confide_toolkit.read_models rebuild identity`.
    service.read_model(
        "accounts", tables=[accounts], store=deps.accounts.events, projection=project_account
    )
    service.document_publications(
        [
            contract.UserRegistered,
            contract.AccountClosed,
            contract.PasswordChanged,
            contract.SessionsRevoked,
            contract.AccountLocked,
            contract.SigningKeyPublished,
            contract.SubjectDataShredded,
        ]
    )
    return service.create_app(
        title="Confide identity",
        description=DESCRIPTION,
        routers=[api.router(deps, service.current_caller)],
        deps=deps,
        problem_types=PROBLEM_TYPES,
    )


def main() -> None:
    settings = IdentitySettings()  # from the environment
    run(lambda: create_app(settings), settings)
