"""The messaging API against the real broker and database: conversations between a client and
their therapist, who may see what, idempotent posting, pagination, limits, closure."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confide_events.identity import AccountClosed, SessionsRevoked
from confide_events.topics import IDENTITY_EVENTS
from confide_messaging.store import messages
from confide_testing import eventually
from confide_toolkit.auth import sign_access_token
from confide_toolkit.clock import SystemClock
from sqlalchemy import func, select

from .conftest import Cast, MessagingService, TopicTap

pytestmark = pytest.mark.integration


async def test_a_client_and_their_therapist_exchange_messages_newest_first(
    messaging: MessagingService, cast: Cast, messaging_events: TopicTap
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    first = await messaging.post(conversation_id, cast.client, "Hello, I'd like to talk.")
    second = await messaging.post(conversation_id, cast.therapist, "Of course.", "therapist")

    response = await messaging.http.get(
        f"/v1/conversations/{conversation_id}/messages", headers=messaging.as_(cast.therapist)
    )

    assert response.status_code == 200
    page = response.json()
    assert [(m["message_id"], m["sender_id"], m["body"]) for m in page["items"]] == [
        (second["message_id"], str(cast.therapist), "Of course."),
        (first["message_id"], str(cast.client), "Hello, I'd like to talk."),
    ]
    assert page["next_cursor"] is None
    sent = await messaging_events.wait_for(
        "confide.messaging.MessageSent", lambda found: len(found) == 2
    )
    # Ids and time only, never the body.
    assert {frozenset(data) for data in sent} == {
        frozenset(
            {"message_id", "conversation_id", "subject_id", "sender_id", "sender_role", "sent_at"}
        )
    }
    started = messaging_events.events("confide.messaging.ConversationStarted")
    assert [s["conversation_id"] for s in started] == [conversation_id]


async def test_a_therapist_who_is_unknown_not_a_therapist_or_closed_is_refused_by_field(
    messaging: MessagingService, cast: Cast
) -> None:
    await messaging.publish(
        IDENTITY_EVENTS,
        AccountClosed(subject_id=cast.other_therapist, closed_at=datetime.now(UTC)),
    )

    async def closed_refused() -> bool:
        response = await messaging.http.post(
            "/v1/conversations",
            json={"therapist_id": str(cast.other_therapist)},
            headers=messaging.as_(cast.client),
        )
        return response.status_code == 404

    await eventually(closed_refused)
    for therapist_id in (uuid.uuid4(), cast.other_client):
        response = await messaging.http.post(
            "/v1/conversations",
            json={"therapist_id": str(therapist_id)},
            headers=messaging.as_(cast.client),
        )
        assert response.status_code == 404
        assert [e["field"] for e in response.json()["errors"]] == ["body.therapist_id"]


async def test_who_may_do_what_on_every_endpoint(messaging: MessagingService, cast: Cast) -> None:
    conversation_id = await messaging.open_conversation(cast)
    callers: dict[str, dict[str, str]] = {
        "client": messaging.as_(cast.client),
        "therapist": messaging.as_(cast.therapist, "therapist"),
        "other therapist": messaging.as_(cast.other_therapist, "therapist"),
        "other client": messaging.as_(cast.other_client),
        "compliance": messaging.as_(cast.compliance, "compliance"),
        "no token": {},
    }
    messages_path = f"/v1/conversations/{conversation_id}/messages"
    notes_path = f"/v1/clients/{cast.client}/notes"
    body = {"body": "a line"}
    disclosure = {"recipient_id": str(uuid.uuid4()), "data_categories": ["messaging.messages"]}
    expected: dict[tuple[str, str], tuple[int, int, int, int, int, int]] = {
        # (method, path): client, therapist, other therapist, other client, compliance, none
        ("POST", "/v1/conversations"): (201, 403, 403, 404, 403, 401),
        ("GET", "/v1/conversations"): (200, 200, 200, 200, 200, 401),
        ("POST", messages_path): (201, 201, 404, 404, 404, 401),
        ("GET", messages_path): (200, 200, 404, 404, 404, 401),
        ("POST", notes_path): (404, 201, 404, 404, 404, 401),
        ("GET", notes_path): (404, 200, 404, 404, 404, 401),
        ("GET", "/v1/compliance/conversations"): (403, 403, 403, 403, 200, 401),
        ("POST", "/v1/disclosures"): (403, 403, 403, 403, 403, 401),
    }
    payloads: dict[tuple[str, str], Any] = {
        ("POST", "/v1/conversations"): {"therapist_id": str(cast.therapist)},
        ("POST", messages_path): body,
        ("POST", notes_path): body,
        ("POST", "/v1/disclosures"): disclosure,
    }
    answered = {}
    for (method, path), statuses in expected.items():
        got = []
        for who, headers in callers.items():
            # The other client opens a conversation with a therapist who is a client: 404.
            payload = payloads.get((method, path))
            if who == "other client" and path == "/v1/conversations" and method == "POST":
                payload = {"therapist_id": str(cast.client)}
            response = await messaging.http.request(method, path, json=payload, headers=headers)
            got.append(response.status_code)
        answered[(method, path)] = tuple(got)
        assert answered[(method, path)] == statuses, (method, path, got)

    # Listing shows each caller only their own conversations.
    for who, listed in (("other therapist", False), ("therapist", True), ("compliance", False)):
        response = await messaging.http.get("/v1/conversations", headers=callers[who])
        ids = {c["conversation_id"] for c in response.json()["items"]}
        assert (conversation_id in ids) is listed, who


async def test_a_body_over_the_limit_is_refused_by_field_and_an_oversized_request_is_413(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    path = f"/v1/conversations/{conversation_id}/messages"

    too_long = await messaging.http.post(
        path, json={"body": "x" * 10_001}, headers=messaging.as_(cast.client)
    )
    too_large = await messaging.http.post(
        path, json={"body": "x" * 70_000}, headers=messaging.as_(cast.client)
    )
    at_the_limit = await messaging.http.post(
        path, json={"body": "é" * 10_000}, headers=messaging.as_(cast.client)
    )

    assert too_long.status_code == 422
    assert [e["field"] for e in too_long.json()["errors"]] == ["body.body"]
    assert too_large.status_code == 413
    assert at_the_limit.status_code == 201


async def test_a_retried_post_answers_the_first_result_and_stores_nothing_twice(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    other_conversation = await messaging.open_conversation(cast)
    path = f"/v1/conversations/{conversation_id}/messages"
    headers = {**messaging.as_(cast.client), "Idempotency-Key": "retry-1"}

    first = await messaging.http.post(path, json={"body": "once"}, headers=headers)
    retried = await messaging.http.post(path, json={"body": "once"}, headers=headers)
    elsewhere = await messaging.http.post(
        f"/v1/conversations/{other_conversation}/messages", json={"body": "once"}, headers=headers
    )

    assert first.status_code == retried.status_code == 201
    assert retried.json() == first.json()
    assert elsewhere.status_code == 422
    assert [e["field"] for e in elsewhere.json()["errors"]] == ["header.Idempotency-Key"]
    async with messaging.deps.engine.connect() as conn:
        stored = await conn.scalar(
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == uuid.UUID(conversation_id))
        )
    assert stored == 1


async def test_pages_stay_consistent_while_new_messages_arrive(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    path = f"/v1/conversations/{conversation_id}/messages"
    posted = [
        (await messaging.post(conversation_id, cast.client, f"m{i}"))["message_id"]
        for i in range(7)
    ]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = (
            await messaging.http.get(path, params=params, headers=messaging.as_(cast.client))
        ).json()
        seen += [m["message_id"] for m in page["items"]]
        # Someone posts between two pages: the pages already begun do not shift.
        await messaging.post(conversation_id, cast.therapist, "meanwhile", "therapist")
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(posted))


async def test_compliance_sees_metadata_and_counts_never_a_body(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, "private words")
    await messaging.post(conversation_id, cast.therapist, "more private words", "therapist")

    response = await messaging.http.get(
        "/v1/compliance/conversations",
        params={"participant_id": str(cast.client)},
        headers=messaging.as_(cast.compliance, "compliance"),
    )

    assert response.status_code == 200
    [item] = response.json()["items"]
    assert item["conversation_id"] == conversation_id
    assert (item["client_id"], item["therapist_id"]) == (str(cast.client), str(cast.therapist))
    assert (item["message_count"], item["note_count"]) == (2, 0)
    assert "private" not in response.text


async def test_a_participants_closed_account_closes_the_conversation_to_new_messages(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    await messaging.post(conversation_id, cast.client, "before")

    await messaging.publish(
        IDENTITY_EVENTS, AccountClosed(subject_id=cast.therapist, closed_at=datetime.now(UTC))
    )

    async def closed() -> bool:
        response = await messaging.http.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"body": "after"},
            headers=messaging.as_(cast.client),
        )
        assert response.status_code in (201, 409)
        return response.status_code == 409 and response.json()["type"].endswith(
            "/conversation-closed"
        )

    await eventually(closed, timeout=10)
    history = await messaging.http.get(
        f"/v1/conversations/{conversation_id}/messages", headers=messaging.as_(cast.client)
    )
    assert history.status_code == 200
    assert "before" in {m["body"] for m in history.json()["items"]}


REVOCATION_TRIES = 10
"""Sessions revoked one after another; of fewer than 100 samples the p99 is the largest."""


async def test_a_revoked_sessions_token_is_refused_within_two_seconds_on_every_endpoint(
    messaging: MessagingService, cast: Cast
) -> None:
    conversation_id = await messaging.open_conversation(cast)
    messages_path = f"/v1/conversations/{conversation_id}/messages"
    delays: list[float] = []
    for _ in range(REVOCATION_TRIES):
        session_id = uuid.uuid4()
        token = sign_access_token(
            messaging.minter.private_key,
            messaging.minter.kid,
            cast.client,
            "client",
            timedelta(minutes=5),
            SystemClock(),
            datetime.now(UTC),
            token_id=uuid.uuid4().hex,
            session_id=session_id,
        )
        headers = {"Authorization": f"Bearer {token}"}
        assert (await messaging.http.get(messages_path, headers=headers)).status_code == 200

        now = datetime.now(UTC)
        await messaging.publish(
            IDENTITY_EVENTS,
            SessionsRevoked(
                subject_id=cast.client,
                session_ids=(session_id,),
                reason="signed_out",
                revoked_at=now,
                tokens_expire_by=now + timedelta(minutes=10),
            ),
        )
        published = time.monotonic()
        while (await messaging.http.get(messages_path, headers=headers)).status_code != 401:
            assert time.monotonic() - published < 10, "a revoked session still served after 10 s"
            await asyncio.sleep(0.02)
        delays.append(time.monotonic() - published)
    # Through Kafka: published → consumed into the read model → refused.
    assert max(delays) <= 2.0, f"p99 {max(delays):.3f} s over {len(delays)} revocations"

    for method, path, payload in (
        ("POST", "/v1/conversations", {"therapist_id": str(cast.therapist)}),
        ("GET", "/v1/conversations", None),
        ("POST", messages_path, {"body": "x"}),
        ("POST", f"/v1/clients/{cast.client}/notes", {"body": "x"}),
        ("GET", f"/v1/clients/{cast.client}/notes", None),
        ("GET", "/v1/compliance/conversations", None),
        (
            "POST",
            "/v1/disclosures",
            {"recipient_id": str(uuid.uuid4()), "data_categories": ["messaging.messages"]},
        ),
    ):
        response = await messaging.http.request(method, path, json=payload, headers=headers)
        assert response.status_code == 401, (method, path)


async def test_the_asyncapi_document_names_what_messaging_publishes_and_consumes(
    messaging: MessagingService,
) -> None:
    document = (await messaging.http.get("/asyncapi.json")).json()

    channels = str(document["channels"])
    for topic in ("messaging.events", "identity.events", "consent.events", "retention.events"):
        assert topic in channels
    for event in ("MessageSent", "RecordAccessed", "RecordsDisclosed", "SubjectDataShredded"):
        assert f"confide.messaging.{event}" in str(document)


async def test_concurrent_retries_store_one_message_and_never_answer_500(
    messaging: MessagingService, cast: Cast
) -> None:
    first = await messaging.open_conversation(cast)
    second = await messaging.open_conversation(cast)
    headers = {**messaging.as_(cast.client), "Idempotency-Key": f"race-{uuid.uuid4()}"}

    answers = await asyncio.gather(
        *(
            messaging.http.post(
                f"/v1/conversations/{conversation}/messages", json={"body": "once"}, headers=headers
            )
            for conversation in (first, first, first, second)
        )
    )

    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([201, 201, 201, 422], [201, 422, 422, 422])
    assert len({a.json()["message_id"] for a in answers if a.status_code == 201}) == 1
    async with messaging.deps.engine.connect() as conn:
        stored = await conn.scalar(
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id.in_([uuid.UUID(first), uuid.UUID(second)]))
        )
    assert stored == 1
