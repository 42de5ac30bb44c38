"""Legal holds through the HTTP API and the real topics: while one stands nothing of its person
expires, whatever fell due meanwhile; its release lets the overdue expiries run."""

from __future__ import annotations

import uuid
from datetime import timedelta

from .conftest import RetentionService, TopicTap


async def _hold(retention: RetentionService, person: uuid.UUID, officer: uuid.UUID) -> str:
    response = await retention.http.post(
        "/v1/legal-holds",
        json={"subject_id": str(person), "reason": "litigation"},
        headers=retention.as_(officer, "compliance"),
    )
    assert response.status_code == 201, response.text
    hold_id: str = response.json()["hold_id"]
    return hold_id


async def test_nothing_expires_under_a_hold_and_overdue_expiries_run_on_release(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person, officer = uuid.uuid4(), uuid.uuid4()
    hold_id = await _hold(retention, person, officer)
    await retention.close_account(person)

    # Every category's period passes (notes 1 h and financial records 2 h after the closure).
    await retention.advance(timedelta(hours=3))
    await retention_events.quiet_for(1.5)
    assert retention_events.expiries_of(person) == []
    [placed] = [
        e
        for e in retention_events.events("confide.retention.LegalHoldPlaced")
        if e["subject_id"] == str(person)
    ]
    assert placed["legal_hold_id"] == hold_id
    assert placed["reason"] == "litigation"

    released = await retention.http.delete(
        f"/v1/legal-holds/{hold_id}", headers=retention.as_(officer, "compliance")
    )
    assert released.status_code == 204
    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: len(retention_events.expiries_of(person)) == 5,
    )
    expiries = {e["category"]: e for e in retention_events.expiries_of(person)}
    assert expiries["identity.profile"]["policy"] == "identity.profile.v1.local"
    assert all(e["erasure_case_id"] is None for e in expiries.values())
    [release] = [
        e
        for e in retention_events.events("confide.retention.LegalHoldReleased")
        if e["legal_hold_id"] == hold_id
    ]
    assert release["released_by"] == str(officer)


async def test_an_erasure_request_waits_for_the_hold_and_says_so(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person, officer = uuid.uuid4(), uuid.uuid4()
    hold_id = await _hold(retention, person, officer)

    response = await retention.http.post("/v1/erasure-requests", headers=retention.as_(person))
    assert response.status_code == 202
    request_id = response.json()["request_id"]
    await retention_events.quiet_for(1.0)
    assert retention_events.expiries_of(person) == []
    status = await retention.status(request_id, retention.as_(person))
    assert status["legal_hold"] is True
    assert status["legal_hold_ids"] is None  # the person is not told which proceedings
    states = {c["category"]: c["state"] for c in status["categories"]}
    assert states["identity.profile"] == "held"
    assert states["messaging.session_notes"] == "retained"
    seen_by_compliance = await retention.status(request_id, retention.as_(officer, "compliance"))
    assert seen_by_compliance["legal_hold_ids"] == [hold_id]

    await retention.http.delete(
        f"/v1/legal-holds/{hold_id}", headers=retention.as_(officer, "compliance")
    )
    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: len(retention_events.expiries_of(person)) == 3,
    )
    assert {e["erasure_case_id"] for e in retention_events.expiries_of(person)} == {request_id}


async def test_holds_are_compliances_alone_and_bad_input_changes_nothing(
    retention: RetentionService,
) -> None:
    person, officer = uuid.uuid4(), uuid.uuid4()

    by_a_client = await retention.http.post(
        "/v1/legal-holds",
        json={"subject_id": str(person), "reason": "litigation"},
        headers=retention.as_(person),
    )
    assert by_a_client.status_code == 403
    free_text = await retention.http.post(
        "/v1/legal-holds",
        json={"subject_id": str(person), "reason": "because I say so"},
        headers=retention.as_(officer, "compliance"),
    )
    assert free_text.status_code == 422
    assert free_text.json()["errors"][0]["field"] == "body.reason"
    unknown = await retention.http.delete(
        f"/v1/legal-holds/{uuid.uuid4()}", headers=retention.as_(officer, "compliance")
    )
    assert unknown.status_code == 404

    hold_id = await _hold(retention, person, officer)
    not_by_client = await retention.http.delete(
        f"/v1/legal-holds/{hold_id}", headers=retention.as_(person)
    )
    assert not_by_client.status_code == 403
    first = await retention.http.delete(
        f"/v1/legal-holds/{hold_id}", headers=retention.as_(officer, "compliance")
    )
    assert first.status_code == 204
    second = await retention.http.delete(
        f"/v1/legal-holds/{hold_id}", headers=retention.as_(officer, "compliance")
    )
    assert second.status_code == 409
    assert second.json()["type"].endswith("/legal-hold-released")
