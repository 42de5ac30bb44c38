"""In-memory stand-ins for what identity's handlers are wired with, for unit tests of the
handlers without PostgreSQL or Kafka: each keeps in a dict what the real one keeps in a table.
The engine hands out a connection that nothing uses, since every statement goes through the
repositories."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from confide_events import IntegrationEvent
from confide_identity import domain
from confide_identity.handlers import Dependencies
from confide_identity.handlers.sealing import Part, ProfileSeal
from confide_identity.passwords import PasswordHasher
from confide_identity.store import (
    AccountRecord,
    Accounts,
    FailureCount,
    SessionLifetime,
    Sessions,
    SignInFailures,
    TotpSteps,
)
from confide_identity.tokens import ServiceSecrets, SigningKey, SigningKeys
from confide_toolkit.clock import FrozenClock
from confide_toolkit.keyring import Erased
from confide_toolkit.outbox import Outbox
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class FakeConnection:
    """Stands for a connection; the fakes below ignore it."""


class FakeEngine:
    def __init__(self) -> None:
        self.transactions = 0

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[FakeConnection]:
        self.transactions += 1
        yield FakeConnection()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[FakeConnection]:
        yield FakeConnection()


class FakeAccounts(Accounts):
    """Account streams and read-model records in memory."""

    def __init__(self) -> None:
        self.streams: dict[uuid.UUID, list[domain.AccountEvent]] = {}
        self.records: dict[uuid.UUID, AccountRecord] = {}

    async def load(self, conn: Any, account_id: uuid.UUID) -> domain.Account | None:
        events = self.streams.get(account_id)
        return domain.Account.replay(events, len(events)) if events else None

    async def load_for_change(self, conn: Any, account_id: uuid.UUID) -> domain.Account | None:
        return await self.load(conn, account_id)

    async def save(self, conn: Any, account: domain.Account) -> list[Any]:
        self.streams.setdefault(account.account_id, []).extend(account.pending)
        account.version += len(account.pending)
        account.pending.clear()
        return []

    async def by_id(self, conn: Any, account_id: uuid.UUID) -> AccountRecord | None:
        return self.records.get(account_id)

    async def by_email_index(self, conn: Any, email_index: str) -> AccountRecord | None:
        return next((r for r in self.records.values() if r.email_index == email_index), None)

    async def email_index_taken(self, conn: Any, email_index: str) -> bool:
        return await self.by_email_index(conn, email_index) is not None


class FakeSessions(Sessions):
    def __init__(self) -> None:
        self.sessions: dict[uuid.UUID, dict[str, Any]] = {}
        self.refresh_tokens: dict[bytes, dict[str, Any]] = {}

    async def open(
        self,
        conn: Any,
        session_id: uuid.UUID,
        account_id: uuid.UUID,
        auth_time: datetime,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        self.sessions[session_id] = {
            "account_id": account_id,
            "auth_time": auth_time,
            "expires_at": expires_at,
            "revoked_at": None,
        }

    async def add_refresh_token(
        self, conn: Any, token_hash: bytes, session_id: uuid.UUID, now: datetime
    ) -> None:
        self.refresh_tokens[token_hash] = {"session_id": session_id, "spent_at": None}

    async def lifetime(self, conn: Any, session_id: uuid.UUID) -> SessionLifetime | None:
        session = self.sessions.get(session_id)
        return None if session is None else SessionLifetime(None, session["expires_at"])


class FakeSignInFailures(SignInFailures):
    def __init__(self) -> None:
        self.counts: dict[str, FailureCount] = {}

    async def locked_until(self, conn: Any, key: str) -> datetime | None:
        count = self.counts.get(key)
        return None if count is None else count.locked_until

    async def count_for_update(self, conn: Any, key: str, now: datetime) -> FailureCount:
        return self.counts.setdefault(key, FailureCount(0, now, None))

    async def save(self, conn: Any, key: str, count: FailureCount) -> None:
        self.counts[key] = count

    async def forget(self, conn: Any, key: str) -> None:
        self.counts.pop(key, None)

    async def forget_stale(self, conn: Any, window_ended_before: datetime, now: datetime) -> None:
        for key, count in list(self.counts.items()):
            lock_over = count.locked_until is None or count.locked_until < now
            if count.window_started_at < window_ended_before and lock_over:
                del self.counts[key]


class FakeTotpSteps(TotpSteps):
    def __init__(self) -> None:
        self.last_step: dict[uuid.UUID, int] = {}

    async def accept(self, conn: Any, account_id: uuid.UUID, step: int) -> bool:
        if self.last_step.get(account_id, -1) >= step:
            return False
        self.last_step[account_id] = step
        return True


class PlainSeal(ProfileSeal):
    """Seals nothing: a ciphertext is its plaintext (the keyring has tests of its own)."""

    def __init__(self) -> None:
        pass

    async def seal(
        self, conn: Any, account_id: uuid.UUID, part: Part, plaintext: bytes
    ) -> domain.Sealed:
        return base64.b64encode(plaintext).decode("ascii")

    def open(self, account: AccountRecord, part: Part, ciphertext: bytes) -> bytes | Erased:
        return ciphertext


class FakeOutbox(Outbox):
    def __init__(self) -> None:
        self.events: list[IntegrationEvent] = []

    async def put(self, conn: Any, event: IntegrationEvent, **_: Any) -> Any:
        self.events.append(event)


class FixedSecrets(ServiceSecrets):
    def __init__(self) -> None:
        pass

    async def get(self, name: str) -> bytes:
        return name.encode().ljust(32, b"-")


class OneSigningKey(SigningKeys):
    def __init__(self) -> None:
        self.key = SigningKey("test-key", Ed25519PrivateKey.generate())

    async def current(self) -> SigningKey:
        return self.key


class CountingHasher(PasswordHasher):
    """Argon2id with the smallest parameters, counting the verifications it makes."""

    def __init__(self) -> None:
        super().__init__(memory_kib=8, iterations=1, lanes=1)
        self.verifications = 0

    async def verify(self, password: str, encoded: str) -> bool:
        self.verifications += 1
        return await super().verify(password, encoded)


def fake_dependencies(
    clock: FrozenClock,
    *,
    account_failure_limit: int = 3,
    address_failure_limit: int = 10,
    lockout: timedelta = timedelta(minutes=15),
) -> Dependencies:
    """Identity's dependencies, every one of them in memory."""
    return Dependencies(
        engine=FakeEngine(),  # type: ignore[arg-type]
        clock=clock,
        outbox=FakeOutbox(),
        accounts=FakeAccounts(),
        sessions=FakeSessions(),
        sign_in_failures=FakeSignInFailures(),
        totp_steps=FakeTotpSteps(),
        sealing=PlainSeal(),
        hasher=CountingHasher(),
        secrets=FixedSecrets(),
        signing_keys=OneSigningKey(),
        access_token_ttl=timedelta(minutes=5),
        session_ttl=timedelta(days=30),
        account_failure_limit=account_failure_limit,
        address_failure_limit=address_failure_limit,
        failure_window=timedelta(minutes=15),
        lockout=lockout,
    )
