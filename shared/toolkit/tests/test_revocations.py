"""Revoked sessions: a token names its session, and the read model of identity's
`SessionsRevoked` refuses the tokens of the sessions it lists, until their last token expired."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt
import pytest
from confide_events import to_envelope
from confide_events.identity import SessionsRevoked
from confide_toolkit.auth import Caller, TokenVerifier, public_jwk, record_signing_key
from confide_toolkit.auth import sign_access_token as sign
from confide_toolkit.clock import FrozenClock
from confide_toolkit.ids import uuid7
from confide_toolkit.inbox import EventContext
from confide_toolkit.outbox import Outbox
from confide_toolkit.problem import Problem
from confide_toolkit.revocations import (
    FORGET_MARGIN,
    RevokedSessions,
    record_sessions_revoked,
    session_revocations,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

pytestmark = pytest.mark.integration

SUBJECT = UUID("01900000-0000-7000-8000-000000000002")
TTL = timedelta(minutes=10)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


def caller(session_id: UUID | None) -> Caller:
    return Caller(SUBJECT, "client", "jti", datetime.now(UTC), session_id=session_id)


async def record(engine: AsyncEngine, event: SessionsRevoked) -> None:
    """Apply the event as the consumer of identity.events would, in one transaction."""
    envelope = to_envelope(
        event, event_id=uuid7(), time=event.revoked_at, correlation_id=str(uuid7())
    )
    async with engine.begin() as conn:
        ctx = EventContext(conn=conn, envelope=envelope, outbox=Outbox("probe", FrozenClock()))
        await record_sessions_revoked(event, ctx)


def revoked(*session_ids: UUID, at: datetime) -> SessionsRevoked:
    return SessionsRevoked(
        subject_id=SUBJECT,
        session_ids=session_ids,
        reason="signed_out",
        revoked_at=at,
        tokens_expire_by=at + TTL,
    )


async def test_a_token_names_its_session_and_a_malformed_one_is_refused(
    toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    key = Ed25519PrivateKey.generate()
    async with toolkit_engine.begin() as conn:
        await record_signing_key(conn, "k1", public_jwk(key, "k1"), clock.now(), None)
    verifier = TokenVerifier(toolkit_engine, clock)
    session_id = uuid.uuid4()

    with_session = sign(key, "k1", SUBJECT, "client", TTL, clock, clock.now(), "j1", session_id)
    without = sign(key, "k1", SUBJECT, "client", TTL, clock, clock.now(), "j2")

    assert (await verifier.verify(with_session)).session_id == session_id
    assert (await verifier.verify(without)).session_id is None
    claims = jwt.decode(with_session, options={"verify_signature": False})
    forged = jwt.encode(
        {**claims, "sid": "not-a-session"},
        key,
        algorithm="EdDSA",
        headers={"kid": "k1", "typ": "at+jwt"},
    )
    with pytest.raises(Problem) as refused:
        await verifier.verify(forged)
    assert refused.value.status == 401


async def test_the_sessions_of_a_revocation_are_refused_and_no_other(
    toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    ended, other, live = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sessions = RevokedSessions(toolkit_engine, clock, max_age=timedelta(0))

    await record(toolkit_engine, revoked(ended, other, at=clock.now()))
    await record(toolkit_engine, revoked(ended, at=clock.now()))  # redelivered: no second row

    assert await sessions.is_revoked(caller(ended))
    assert await sessions.is_revoked(caller(other))
    assert not await sessions.is_revoked(caller(live))
    # A token from before tokens named their session expires on its own.
    assert not await sessions.is_revoked(caller(None))
    async with toolkit_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(session_revocations)) == 2


async def test_a_revocation_is_seen_within_the_cache_age(
    toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    session_id = uuid.uuid4()
    sessions = RevokedSessions(toolkit_engine, clock, max_age=timedelta(seconds=0.2))
    assert not await sessions.is_revoked(caller(session_id))  # loaded now, without it

    await record(toolkit_engine, revoked(session_id, at=clock.now()))

    await asyncio.sleep(0.25)
    assert await sessions.is_revoked(caller(session_id))


async def test_a_session_is_forgotten_once_its_last_token_has_expired(
    toolkit_engine: AsyncEngine, clock: FrozenClock
) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    long_ago = clock.now() - TTL - FORGET_MARGIN - timedelta(minutes=1)
    sessions = RevokedSessions(toolkit_engine, clock, max_age=timedelta(0))

    await record(toolkit_engine, revoked(old, at=long_ago))
    assert not await sessions.is_revoked(caller(old))  # its tokens have all expired
    await record(toolkit_engine, revoked(recent, at=clock.now()))

    async with toolkit_engine.connect() as conn:
        kept = set((await conn.execute(select(session_revocations.c.session_id))).scalars())
    assert kept == {recent}
