"""Personal data stays encrypted everywhere identity writes, and crypto-shredding erases it."""

import uuid
from datetime import UTC, datetime

import pytest
from confide_events.retention import RetentionExpired
from confide_events.topics import IDENTITY_EVENTS, RETENTION_EVENTS
from confide_identity.handlers import accounts
from confide_testing import eventually
from confide_toolkit.clock import FrozenClock
from confide_toolkit.keyring import ERASED
from sqlalchemy import text

from .conftest import (
    RunningIdentity,
    SettingsFactory,
    bearer,
    events_about,
    publish,
    read_topic,
    registration,
    running_identity,
)

pytestmark = pytest.mark.integration


def _forms(value: str) -> list[bytes]:
    # As text, and as PostgreSQL prints bytea (hex), so plaintext in a binary column shows too.
    encoded = value.encode()
    return [encoded, encoded.hex().encode(), value.lower().encode()]


async def test_no_email_name_or_password_in_the_database_the_topic_or_the_logs(
    make_settings: SettingsFactory,
    clock: FrozenClock,
    kafka_bootstrap: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = registration(
        email=f"Linnea.Quist.{uuid.uuid4().hex[:6]}@Example.org",
        display_name=f"Linnea Quist {uuid.uuid4().hex[:6]}",
        password=f"tidal-ember-orchard-{uuid.uuid4().hex[:6]}",
    )
    async with running_identity(make_settings(log_level="DEBUG"), clock) as identity:
        user_id, _ = await identity.register(**body)
        tokens = await identity.tokens(body)
        await identity.client.patch(
            "/v1/accounts/me",
            json={"phone": "+46 70 123 45 67", "address": "Storgatan 1, Lund"},
            headers=bearer(tokens),
        )
        await identity.sign_in({**body, "password": "a-wrong-password-1"})

        async def published() -> bool:
            events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
            return any(e.type == "confide.identity.UserRegistered" for e in events)

        await eventually(published)
        database = await _dump(identity)
    topic = b"".join(
        r.value + b"".join(v for _, v in r.headers)
        for r in await read_topic(kafka_bootstrap, IDENTITY_EVENTS)
    )
    logs = capsys.readouterr()
    log_text = (logs.out + logs.err).encode()

    secrets = [body["email"], body["display_name"], body["password"], "Storgatan", "123 45 67"]
    for value in secrets:
        for form in _forms(value):
            assert form not in database, f"{value!r} in the database"
            assert form not in topic, f"{value!r} in identity.events"
            assert form not in log_text, f"{value!r} in the logs"
    # The scans did read something: the records and the service's own log lines.
    assert b"UserRegistered" in topic
    assert b'"service": "identity"' in log_text


async def _dump(identity: RunningIdentity) -> bytes:
    """Every row of every table in the database, as PostgreSQL prints it."""
    async with identity.deps.engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        dump = []
        for table in list(tables):
            rows = await conn.execute(text(f'SELECT t::text FROM "{table}" t'))
            dump += [row[0] for row in rows]
    return "\n".join(dump).encode()


async def test_retention_expiry_shreds_the_profile_and_the_account_can_no_longer_sign_in(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    tokens = await identity.tokens(body)
    await identity.client.post("/v1/accounts/me/close", headers=bearer(tokens))

    await publish(
        kafka_bootstrap,
        RETENTION_EVENTS,
        RetentionExpired(
            subject_id=user_id,
            category="identity.profile",
            policy="identity.profile.closed_account",
            due_at=datetime.now(UTC),
        ),
    )

    async def shredded() -> bool:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return any(e.type == "confide.identity.SubjectDataShredded" for e in events)

    await eventually(shredded)
    # Every identity deployment on this broker answers (the dev stack's own answers "nothing
    # held" for a person it never saw): this identity's answer is the one that shredded.
    [announcement] = [
        e
        for e in await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        if e.type == "confide.identity.SubjectDataShredded" and e.data["outcome"] == "shredded"
    ]
    assert announcement.data["category"] == "identity.profile"
    assert announcement.data["outcome"] == "shredded"
    assert announcement.data["key_id"] is not None
    view = await accounts.read_account(identity.deps, user_id)
    assert view.status == "erased"
    assert view.profile.email is ERASED and view.profile.display_name is ERASED
    assert (await identity.sign_in(body)).status_code == 401
    # The email is free again: nothing links it to the erased account any more.
    assert (await identity.client.post("/v1/accounts", json=body)).status_code == 201


async def test_an_open_account_whose_profile_is_shredded_cannot_sign_in_or_use_its_tokens(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    tokens = await identity.tokens(body)

    await publish(
        kafka_bootstrap,
        RETENTION_EVENTS,
        RetentionExpired(
            subject_id=user_id,
            category="identity.profile",
            policy="identity.profile.erasure_request",
            due_at=datetime.now(UTC),
            erasure_case_id=uuid.uuid4(),
        ),
    )

    async def erased() -> bool:
        return (await accounts.read_account(identity.deps, user_id)).status == "erased"

    await eventually(erased)
    assert (await identity.sign_in(body)).status_code == 401
    assert (await identity.client.get("/v1/accounts/me", headers=bearer(tokens))).status_code == 401


async def test_an_expiry_for_a_person_identity_never_saw_is_answered_nothing_held(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    stranger = uuid.uuid4()
    erasure_case_id = uuid.uuid4()

    await publish(
        kafka_bootstrap,
        RETENTION_EVENTS,
        RetentionExpired(
            subject_id=stranger,
            category="identity.profile",
            policy="identity.profile.erasure_request",
            due_at=datetime.now(UTC),
            erasure_case_id=erasure_case_id,
        ),
    )

    async def answers() -> list[dict[str, object]]:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(stranger))
        return [e.data for e in events if e.type == "confide.identity.SubjectDataShredded"]

    async def answered() -> bool:
        return bool(await answers())

    await eventually(answered)
    # One answer per identity deployment on this broker (the dev stack's too), each the same.
    for answer in await answers():
        assert answer["outcome"] == "nothing_held"
        assert answer["key_id"] is None
        assert answer["category"] == "identity.profile"
        assert answer["erasure_case_id"] == str(erasure_case_id)


async def test_a_redelivered_expiry_is_answered_again_with_the_same_key_and_changes_nothing(
    identity: RunningIdentity, kafka_bootstrap: str
) -> None:
    user_id, body = await identity.register()
    await identity.tokens(body)  # a live session, which the first shredding ends
    expiry = RetentionExpired(
        subject_id=user_id,
        category="identity.profile",
        policy="identity.profile.erasure_request",
        due_at=datetime.now(UTC),
        erasure_case_id=uuid.uuid4(),
    )

    async def answers() -> list[dict[str, object]]:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return [
            e.data
            for e in events
            if e.type == "confide.identity.SubjectDataShredded" and e.data["outcome"] == "shredded"
        ]

    async def revocations() -> int:
        events = await events_about(kafka_bootstrap, IDENTITY_EVENTS, str(user_id))
        return sum(e.type == "confide.identity.SessionsRevoked" for e in events)

    await publish(kafka_bootstrap, RETENTION_EVENTS, expiry)

    async def answered(count: int) -> bool:
        return len(await answers()) == count

    await eventually(lambda: answered(1))
    [first] = await answers()
    erased = await accounts.read_account(identity.deps, user_id)
    revoked = await revocations()
    assert revoked == 1

    # Retention re-emits an expiry whose answer it did not see in time: a new event, the same
    # expiry. It is answered again, with the same key and time, and nothing else happens.
    await publish(kafka_bootstrap, RETENTION_EVENTS, expiry)
    await eventually(lambda: answered(2))
    _, second = await answers()
    assert second == first
    assert await revocations() == revoked
    assert await accounts.read_account(identity.deps, user_id) == erased
    assert (await identity.sign_in(body)).status_code == 401
