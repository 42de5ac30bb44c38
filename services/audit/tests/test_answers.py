"""Compliance's answers through the HTTP API, from events published on the real topics: a
person's whole journey in order, disclosures checked against the consent history, record
accesses, erasure cases; every other caller refused on every route; every query recorded in
the trail's own chain."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confide_audit import handlers, store
from confide_audit.domain import QUERIES_GENERATION
from confide_events.identity import Role
from confide_toolkit.auth import Caller
from confide_toolkit.clock import FrozenClock
from sqlalchemy import select

from .conftest import AuditService
from .journeys import NOTES, Journey

pytestmark = pytest.mark.integration


async def walk_journey(audit: AuditService, journey: Journey) -> list[str]:
    """Publish a whole journey on the topics of its producers; returns the event types in the
    order they happened."""
    topics = audit.topics
    steps = [
        (topics.identity, [journey.registered()]),
        (topics.consent, [journey.consented()]),
        (topics.messaging, [*journey.conversation(), journey.note_read()]),
        (topics.messaging, [journey.disclosed(6)]),
        (topics.consent, [journey.revoked(7)]),
        (topics.retention, [journey.erasure_requested(8), journey.expired(NOTES, 9)]),
        (topics.messaging, [journey.shredded(NOTES, 10)]),
        (topics.retention, [journey.erasure_completed(11)]),
    ]
    sent = []
    types = []
    for topic, events in steps:
        sent += await audit.publish(topic, *events)
        types += [event.event_type for event in events]
    await audit.in_trail(sent)
    return types


async def test_the_timeline_of_a_whole_journey_holds_every_step_in_order(
    audit: AuditService,
) -> None:
    journey = Journey()
    expected = await walk_journey(audit, journey)
    pages, cursor = [], None
    while True:
        response = await audit.http.get(
            f"/v1/subjects/{journey.client}/timeline",
            params={"limit": 4, **({"cursor": cursor} if cursor else {})},
            headers=audit.officer,
        )
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    timeline = [item for page in pages for item in page]
    assert [item["event_type"] for item in timeline] == expected
    assert len(pages) == 3  # 12 steps, 4 a page
    assert all(item["data"]["subject_id"] == str(journey.client) for item in timeline)


async def test_a_disclosure_on_a_consent_revoked_before_it_is_flagged_one_on_a_valid_one_not(
    audit: AuditService,
) -> None:
    journey = Journey()
    valid_id, late_id = uuid.uuid4(), uuid.uuid4()
    await audit.publish_and_keep(audit.topics.consent, journey.consented(1))
    await audit.publish_and_keep(audit.topics.messaging, journey.disclosed(2, valid_id))
    await audit.publish_and_keep(audit.topics.consent, journey.revoked(3))
    await audit.publish_and_keep(audit.topics.messaging, journey.disclosed(4, late_id))

    response = await audit.http.get(
        "/v1/disclosures", params={"subject_id": str(journey.client)}, headers=audit.officer
    )
    assert response.status_code == 200, response.text
    found = {item["disclosure_id"]: item for item in response.json()["items"]}
    assert found[str(valid_id)]["consent_valid"] is True
    assert found[str(valid_id)]["flagged"] is False
    late = found[str(late_id)]
    assert (late["consent_valid"], late["flagged"]) == (False, True)
    assert late["reason"] == "consent revoked before the disclosure"
    assert late["consent"]["consent_id"] == str(journey.consent_id)
    assert late["consent"]["revoked_at"] is not None

    flagged = await audit.http.get(
        "/v1/disclosures", params={"flagged": "true"}, headers=audit.officer
    )
    flagged_ids = {item["disclosure_id"] for item in flagged.json()["items"]}
    assert str(late_id) in flagged_ids
    assert str(valid_id) not in flagged_ids


async def test_every_record_access_is_listed(audit: AuditService) -> None:
    journey = Journey()
    await audit.publish_and_keep(audit.topics.messaging, journey.note_read(5), journey.note_read(6))
    response = await audit.http.get(
        "/v1/record-accesses", params={"subject_id": str(journey.client)}, headers=audit.officer
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(i["accessor_id"], i["category"]) for i in items] == [
        (str(journey.therapist), NOTES)
    ] * 2


async def test_an_erasure_case_shows_each_owners_answer_and_the_certificate(
    audit: AuditService,
) -> None:
    journey = Journey()
    await walk_journey(audit, journey)
    response = await audit.http.get(
        "/v1/erasures", params={"subject_id": str(journey.client)}, headers=audit.officer
    )
    assert response.status_code == 200, response.text
    [case] = response.json()["items"]
    assert case["erasure_case_id"] == str(journey.case_id)
    assert case["certificate_id"] == str(journey.certificate_id)
    assert case["open"] is False
    assert case["every_owner_confirmed"] is True
    assert [(e["category"], e["owner"], e["answer"]) for e in case["expiries"]] == [
        (NOTES, "messaging", "shredded")
    ]


async def test_an_expiry_left_unanswered_past_the_timeout_is_reported(
    audit: AuditService,
) -> None:
    journey = Journey()
    await audit.publish_and_keep(
        audit.topics.retention,
        journey.erasure_requested(1),
        journey.expired(NOTES, 2),
        journey.expired("messaging.messages", 2),
    )
    await audit.publish_and_keep(audit.topics.messaging, journey.shredded(NOTES, 3))
    now = datetime.now(UTC)
    officer = Caller(audit.compliance, "compliance", token_id="t", auth_time=now)
    for later, overdue in ((timedelta(minutes=5), False), (timedelta(hours=2), True)):
        deps = dataclasses.replace(audit.deps, clock=FrozenClock(now + later))
        [case] = await handlers.erasures(deps, officer, subject_id=journey.client, open_only=True)
        answers = {e.category: (e.answer, e.overdue) for e in case.expiries}
        assert answers == {NOTES: ("shredded", False), "messaging.messages": (None, overdue)}
        assert case.open


def routes_under(audit: AuditService, prefix: str) -> list[str]:
    """Every path the app serves under `prefix`, with ids filled in."""
    paths = {
        getattr(route, "path", "")
        for included in audit.app.routes
        # FastAPI keeps an included router's routes on it, with their full paths.
        for route in getattr(getattr(included, "original_router", None), "routes", [included])
    }
    return sorted(
        path.replace("{subject_id}", str(uuid.uuid4())).replace("{kind}", "pdf")
        for path in paths
        if path.startswith(prefix)
    )


@pytest.mark.parametrize("role", ["client", "therapist"])
async def test_a_caller_other_than_compliance_gets_403_on_every_route(
    audit: AuditService, role: Role
) -> None:
    routes = routes_under(audit, "/v1/")
    assert len(routes) == 6
    for path in routes:
        response = await audit.http.get(path, headers=audit.as_(uuid.uuid4(), role))
        assert response.status_code == 403, path
        assert response.headers["content-type"] == "application/problem+json"
        anonymous = await audit.http.get(path)
        assert anonymous.status_code == 401, path
    pages = [path for path in routes_under(audit, "/console") if path != "/console/sign-in"]
    assert len(pages) == 6
    for path in pages:
        response = await audit.http.get(path, headers=audit.as_(uuid.uuid4(), role))
        assert response.status_code == 403, path
        assert "Only compliance officers" in response.text


async def test_every_query_is_recorded_in_the_trail_own_chain(audit: AuditService) -> None:
    subject = uuid.uuid4()
    await audit.http.get(f"/v1/subjects/{subject}/timeline", headers=audit.officer)
    await audit.http.get("/v1/erasures", headers=audit.officer)
    refused = await audit.http.get("/v1/erasures", headers=audit.as_(uuid.uuid4(), "client"))
    assert refused.status_code == 403
    async with audit.deps.engine.connect() as conn:
        values = (
            await conn.execute(
                select(store.trail_entries.c.value)
                .where(store.trail_entries.c.generation == QUERIES_GENERATION)
                .order_by(store.trail_entries.c.seq.desc())
                .limit(2)
            )
        ).scalars()
        recorded = [v.decode() for v in values]
    assert '"query":"erasures"' in recorded[0]
    assert f'"subject_id":"{subject}"' in recorded[1]
    assert f'"caller":"{audit.compliance}"' in recorded[1]
    chain = await audit.http.get("/v1/chain", headers=audit.officer)
    assert chain.json()["intact"] is True


async def test_a_person_the_trail_does_not_know_answers_404(audit: AuditService) -> None:
    response = await audit.http.get(f"/v1/subjects/{uuid.uuid4()}/timeline", headers=audit.officer)
    assert response.status_code == 404
