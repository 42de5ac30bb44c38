"""Erasure requests through the HTTP API and the real topics: the fresh sign-in a person needs,
what expires at once and what the law keeps, the owners' answers, retries, pause and resume,
and the signed certificate that verifies offline."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from confide_retention.certificates import CERTIFICATE_TYPE
from confide_retention.store import erasure_cases
from confide_testing import eventually
from confide_toolkit.kek import KekSchedule, backups_clear_from
from confide_toolkit.signed_documents import DocumentInvalid, verify_document
from sqlalchemy import func, select

from .conftest import ANSWER_TIMEOUT, RetentionService, TopicTap

AT_ONCE = {"identity.profile", "messaging.messages", "billing.payment_methods"}
KEPT_BY_LAW = {"messaging.session_notes", "billing.financial_records"}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _by_category(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["category"]: c for c in status["categories"]}


async def _request(retention: RetentionService, person: uuid.UUID) -> str:
    response = await retention.http.post("/v1/erasure-requests", headers=retention.as_(person))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def _emitted(tap: TopicTap, person: uuid.UUID, categories: set[str]) -> None:
    await tap.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: {e["category"] for e in tap.expiries_of(person)} >= categories,
    )


async def test_a_stale_sign_in_is_refused_with_a_problem_that_says_so_and_opens_nothing(
    retention: RetentionService,
) -> None:
    person = uuid.uuid4()
    signed_in_long_ago = retention.clock.now() - timedelta(minutes=6)

    response = await retention.http.post(
        "/v1/erasure-requests", headers=retention.as_(person, auth_time=signed_in_long_ago)
    )

    assert response.status_code == 401
    problem = response.json()
    assert problem["type"].endswith("/fresh-sign-in-required")
    assert problem["max_age"] == 300
    assert "insufficient_user_authentication" in response.headers["WWW-Authenticate"]
    async with retention.deps.engine.connect() as conn:
        opened = await conn.scalar(
            select(func.count())
            .select_from(erasure_cases)
            .where(erasure_cases.c.subject_id == person)
        )
    assert opened == 0


async def test_a_persons_request_expires_at_once_what_no_law_keeps_and_retains_the_rest(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    now = retention.clock.now()

    request_id = await _request(retention, person)
    await _emitted(retention_events, person, AT_ONCE)

    expiries = retention_events.expiries_of(person)
    assert {e["category"] for e in expiries} == AT_ONCE  # nothing the law keeps went out
    assert all(e["erasure_case_id"] == request_id for e in expiries)
    status = await retention.status(request_id, retention.as_(person))
    assert status["origin"] == "subject_request"
    categories = _by_category(status)
    for category in AT_ONCE:
        assert categories[category]["state"] == "awaiting_owner"
        assert [e["step"] for e in categories[category]["log"]] == ["requested", "emitted"]
    notes = categories["messaging.session_notes"]
    assert notes["state"] == "retained"
    assert notes["retained_on"] == "legal_obligation"
    assert notes["ground"] == "clinical_record"
    # The request ends the relationship as a closure would: the test policy keeps notes 1 h.
    assert _time(notes["retained_until"]) == now + timedelta(hours=1)
    assert [e["step"] for e in notes["log"]] == ["requested", "retained_until"]
    records = categories["billing.financial_records"]
    assert records["ground"] == "tax_law"
    assert _time(records["retained_until"]) == now + timedelta(hours=2)


async def test_answers_complete_the_case_with_a_certificate_that_verifies_offline(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    request_id = await _request(retention, person)
    await _emitted(retention_events, person, AT_ONCE)
    case_id = uuid.UUID(request_id)

    profile_key = await retention.answer(person, "identity.profile", erasure_case_id=case_id)
    messages_key = await retention.answer(person, "messaging.messages", erasure_case_id=case_id)
    await retention.answer(
        person, "billing.payment_methods", "nothing_held", erasure_case_id=case_id
    )
    completed = await retention_events.wait_for(
        "confide.retention.ErasureCompleted",
        lambda found: any(e["erasure_case_id"] == request_id for e in found),
    )

    [event] = [e for e in completed if e["erasure_case_id"] == request_id]
    outcomes = {o["category"]: o for o in event["outcomes"]}
    assert outcomes["identity.profile"]["key_id"] == str(profile_key)
    assert outcomes["billing.payment_methods"]["outcome"] == "nothing_held"
    assert outcomes["messaging.session_notes"]["outcome"] == "retained"
    status = await retention.status(request_id, retention.as_(person))
    assert status["status"] == "completed"
    assert status["certificate_id"] == event["certificate_id"]
    categories = _by_category(status)
    assert categories["messaging.messages"]["state"] == "shredded"
    assert categories["messaging.messages"]["key_id"] == str(messages_key)
    assert categories["messaging.messages"]["answered_by"] == "messaging"
    assert [e["step"] for e in categories["identity.profile"]["log"]] == [
        "requested",
        "emitted",
        "acknowledged",
    ]
    assert categories["billing.payment_methods"]["log"][-1]["step"] == "nothing_held"

    response = await retention.http.get(
        f"/v1/certificates/{event['certificate_id']}", headers=retention.as_(person)
    )
    assert response.status_code == 200, response.text
    jws = response.json()["jws"]
    jwks = (await retention.http.get("/v1/signing-keys")).json()
    # Offline: nothing but the JWS and the published keys.
    claims = verify_document(jws, jwks, CERTIFICATE_TYPE)
    assert claims["sub"] == str(person)
    assert claims["erasure_case_id"] == request_id
    by_category = {c["category"]: c for c in claims["categories"]}
    assert by_category["identity.profile"] == {
        "category": "identity.profile",
        "policy": "identity.profile.v1.local",
        "outcome": "shredded",
        "key_id": str(profile_key),
        "by": "identity",
        "at": by_category["identity.profile"]["at"],
    }
    assert by_category["billing.financial_records"]["outcome"] == "retained"
    assert by_category["billing.financial_records"]["retained_on"] == "legal_obligation"
    # The KEK version that wrapped the shredded keys is replaced within a rotation period and
    # destroyed one backup retention after that (the toolkit's schedule: 30 + 35 days and the
    # maintenance timer's slack by default).
    clear_from = _time(claims["backups_clear_from"])
    assert clear_from == backups_clear_from(_time(claims["issued_at"]), KekSchedule())
    assert clear_from >= _time(claims["issued_at"]) + timedelta(days=65)
    assert "d" not in jwks["keys"][0]  # only the public half is published

    header, payload, signature = jws.split(".")
    altered = dict(claims, categories=[{**c, "outcome": "shredded"} for c in claims["categories"]])
    forged = base64.urlsafe_b64encode(json.dumps(altered).encode()).rstrip(b"=").decode()
    for tampered in (f"{header}.{forged}.{signature}", f"{header}.{payload}.{signature[:-4]}AAAA"):
        try:
            verify_document(tampered, jwks, CERTIFICATE_TYPE)
        except DocumentInvalid:
            continue
        raise AssertionError("an altered certificate verified")
    try:
        verify_document(jws, {"keys": []}, CERTIFICATE_TYPE)
        raise AssertionError("a certificate verified without its key")
    except DocumentInvalid:
        pass

    # At their legal end, the categories the law kept expire too, in the same case.
    await retention.advance(timedelta(hours=2, seconds=1))
    await _emitted(retention_events, person, AT_ONCE | KEPT_BY_LAW)
    await retention.answer(person, "messaging.session_notes", erasure_case_id=case_id)

    async def notes_shredded() -> bool:
        found = _by_category(await retention.status(request_id, retention.as_(person)))
        return bool(found["messaging.session_notes"]["state"] == "shredded")

    await eventually(notes_shredded)


async def test_an_unanswered_expiry_is_emitted_again_after_the_timeout(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    request_id = await _request(retention, person)
    await _emitted(retention_events, person, AT_ONCE)
    case_id = uuid.UUID(request_id)
    await retention.answer(person, "messaging.messages", erasure_case_id=case_id)
    await retention.answer(person, "billing.payment_methods", erasure_case_id=case_id)

    async def answered() -> bool:
        found = _by_category(await retention.status(request_id, retention.as_(person)))
        return found["billing.payment_methods"]["state"] == "shredded"

    await eventually(answered)
    await retention.advance(ANSWER_TIMEOUT + timedelta(seconds=1))

    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: len(retention_events.expiries_of(person)) == 4,
    )
    await retention_events.quiet_for(0.5)
    again = [e["category"] for e in retention_events.expiries_of(person)]
    assert sorted(again) == sorted([*AT_ONCE, "identity.profile"])  # only the unanswered one
    profile = _by_category(await retention.status(request_id, retention.as_(person)))[
        "identity.profile"
    ]
    assert [(e["step"], e["attempt"]) for e in profile["log"]] == [
        ("requested", None),
        ("emitted", 1),
        ("retried", 2),
    ]


async def test_a_second_answer_to_the_same_expiry_changes_nothing(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person = uuid.uuid4()
    request_id = await _request(retention, person)
    await _emitted(retention_events, person, AT_ONCE)
    case_id = uuid.UUID(request_id)
    first_key = await retention.answer(person, "identity.profile", erasure_case_id=case_id)
    # Redelivered or late: a different key id must not replace the first answer.
    await retention.answer(person, "identity.profile", erasure_case_id=case_id)
    await retention.answer(person, "messaging.messages", erasure_case_id=case_id)

    async def messages_answered() -> bool:
        found = _by_category(await retention.status(request_id, retention.as_(person)))
        return found["messaging.messages"]["state"] == "shredded"

    await eventually(messages_answered)
    profile = _by_category(await retention.status(request_id, retention.as_(person)))[
        "identity.profile"
    ]
    assert profile["key_id"] == str(first_key)
    assert [e["step"] for e in profile["log"]].count("acknowledged") == 1


async def test_compliance_pauses_and_resumes_a_case(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person, officer = uuid.uuid4(), uuid.uuid4()
    response = await retention.http.post(
        "/v1/erasure-requests",
        json={"subject_id": str(person)},
        headers=retention.as_(officer, "compliance"),
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    await _emitted(retention_events, person, AT_ONCE)

    paused = await retention.http.post(
        f"/v1/erasure-requests/{request_id}/pause", headers=retention.as_(officer, "compliance")
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert paused.json()["origin"] == "compliance_request"
    again = await retention.http.post(
        f"/v1/erasure-requests/{request_id}/pause", headers=retention.as_(officer, "compliance")
    )
    assert again.status_code == 409
    await retention.advance(ANSWER_TIMEOUT + timedelta(seconds=1))
    await retention_events.quiet_for(1.0)
    assert len(retention_events.expiries_of(person)) == 3  # no retry while paused

    resumed = await retention.http.post(
        f"/v1/erasure-requests/{request_id}/resume", headers=retention.as_(officer, "compliance")
    )
    assert resumed.status_code == 200, resumed.text
    await retention_events.wait_for(
        "confide.retention.RetentionExpired",
        lambda _: len(retention_events.expiries_of(person)) == 6,
    )


async def test_who_may_request_and_see_an_erasure(
    retention: RetentionService, retention_events: TopicTap
) -> None:
    person, stranger, officer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    someone_else = await retention.http.post(
        "/v1/erasure-requests", json={"subject_id": str(person)}, headers=retention.as_(stranger)
    )
    assert someone_else.status_code == 403
    unnamed = await retention.http.post(
        "/v1/erasure-requests", json={}, headers=retention.as_(officer, "compliance")
    )
    assert unnamed.status_code == 422
    assert unnamed.json()["errors"][0]["field"] == "body.subject_id"
    misspelt = await retention.http.post(
        "/v1/erasure-requests", json={"subject": str(person)}, headers=retention.as_(person)
    )
    assert misspelt.status_code == 422
    anonymous = await retention.http.post("/v1/erasure-requests")
    assert anonymous.status_code == 401

    request_id = await _request(retention, person)
    twice = await retention.http.post("/v1/erasure-requests", headers=retention.as_(person))
    assert twice.status_code == 409
    assert twice.json()["request_id"] == request_id

    hidden = await retention.http.get(
        f"/v1/erasure-requests/{request_id}", headers=retention.as_(stranger)
    )
    assert hidden.status_code == 404
    seen = await retention.http.get(
        f"/v1/erasure-requests/{request_id}", headers=retention.as_(officer, "compliance")
    )
    assert seen.status_code == 200
    not_theirs = await retention.http.post(
        f"/v1/erasure-requests/{request_id}/pause", headers=retention.as_(person)
    )
    assert not_theirs.status_code == 403


async def test_the_policies_in_force_are_published(retention: RetentionService) -> None:
    response = await retention.http.get("/v1/policies")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "2026-11+local"
    policies = {p["category"]: p for p in body["policies"]}
    assert set(policies) == AT_ONCE | KEPT_BY_LAW
    assert policies["identity.profile"]["keep_for"] == "PT60S"
    assert policies["identity.profile"]["clock_starts_on"] == ["account_closed"]
    assert policies["messaging.session_notes"]["legal_obligation"] == "clinical_record"
    assert policies["messaging.session_notes"]["clock_starts_on"] == ["last_note", "account_closed"]
    assert policies["billing.financial_records"]["legal_obligation"] == "tax_law"
    assert policies["billing.payment_methods"]["legal_obligation"] is None


async def test_the_api_and_the_events_are_documented(retention: RetentionService) -> None:
    openapi = (await retention.http.get("/openapi.json")).json()
    assert {
        "/v1/policies",
        "/v1/erasure-requests",
        "/v1/erasure-requests/{request_id}",
        "/v1/legal-holds",
        "/v1/legal-holds/{hold_id}",
        "/v1/certificates/{certificate_id}",
        "/v1/signing-keys",
    } <= set(openapi["paths"])
    asyncapi = json.dumps((await retention.http.get("/asyncapi.json")).json())
    for published in ("RetentionExpired", "ErasureCompleted", "LegalHoldPlaced"):
        assert f"confide.retention.{published}" in asyncapi
    for consumed in ("identity.events", "messaging.events", "billing.events"):
        assert consumed in asyncapi
