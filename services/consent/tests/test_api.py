"""The consent HTTP contract against the real database and broker: grants and their receipts,
refusals that record nothing, withdrawal, history at past times, pagination, recipients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confide_consent.app import create_app
from confide_consent.receipts import ReceiptInvalid, verify_receipt
from confide_consent.store import (
    RECEIPT_KEYS_CATEGORY,
    RECEIPT_KEYS_SUBJECT,
    consents,
    receipt_signing_keys,
)
from confide_testing import eventually, serving
from confide_toolkit.event_store import ConcurrencyConflict, stored_events
from confide_toolkit.outbox import outbox
from confide_toolkit.problem import problem_type
from confide_toolkit.read_models import rebuild_read_model
from sqlalchemy import delete, event, func, select, update

from .conftest import ConsentService, Payloads

pytestmark = pytest.mark.integration


async def recorded_for(consent: ConsentService) -> tuple[int, int]:
    """How many ledger events and outbox rows the signed-in client has (other tests' closed
    accounts, consumed from identity.events, have streams of their own in the same database)."""
    async with consent.service.engine.connect() as conn:
        events = await conn.scalar(
            select(func.count()).where(stored_events.c.stream_id == consent.client_id)
        )
        published = await conn.scalar(
            select(func.count()).where(outbox.c.partition_key == str(consent.client_id))
        )
    return int(events or 0), int(published or 0)


async def test_purposes_show_current_policy_text_and_its_hash(consent: ConsentService) -> None:
    response = await consent.http.get("/v1/purposes")
    assert response.status_code == 200
    purposes = {p["purpose"]: p for p in response.json()["items"]}
    assert set(purposes) == {"share_with_provider", "research"}
    assert purposes["share_with_provider"]["requires_recipient"] is True
    for purpose in purposes.values():
        text = purpose["policy_text"]
        assert purpose["policy_hash"] == hashlib.sha256(text.encode()).hexdigest()
    old = await consent.http.get("/v1/purposes/share_with_provider/policies/2025-06")
    assert old.status_code == 200 and old.json()["current"] is False


async def test_grant_answers_a_receipt_that_verifies_with_the_published_key(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.share_with_provider())
    jwks = (await consent.http.get("/v1/receipt-keys")).json()

    claims = verify_receipt(granted["receipt"]["jws"], jwks)

    record = claims["consent"]
    assert record["consent_id"] == granted["consent_id"]
    assert record["subject_id"] == claims["piiPrincipalId"] == str(consent.client_id)
    assert record["recipient_id"] == str(payloads.northside_clinic)
    assert record["data_categories"] == ["messaging.session_notes"]
    assert record["policy_version"] == "2026-01"
    assert record["method"] == claims["collectionMethod"] == "web_form"
    assert claims["consentReceiptID"] == granted["receipt"]["receipt_id"]
    purposes = (await consent.http.get("/v1/purposes")).json()["items"]
    current = next(p for p in purposes if p["purpose"] == "share_with_provider")
    assert record["policy_hash"] == current["policy_hash"]
    assert all("d" not in key for key in jwks["keys"])


async def test_receipt_endpoint_serves_the_same_signed_receipt_and_tampering_is_detected(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.research())
    receipt = await consent.http.get(
        f"/v1/consents/{granted['consent_id']}/receipt", headers=consent.as_client()
    )
    assert receipt.status_code == 200
    jws = receipt.json()["jws"]
    assert jws == granted["receipt"]["jws"]
    jwks = (await consent.http.get("/v1/receipt-keys")).json()

    header, payload, signature = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["consent"]["data_categories"].append("messaging.session_notes")
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(ReceiptInvalid):
        verify_receipt(f"{header}.{forged}.{signature}", jwks)


@pytest.mark.parametrize("purpose", ["sell_data", "share_for_marketing", "marketing"])
async def test_selling_or_marketing_is_refused_with_422_and_records_nothing(
    consent: ConsentService, payloads: type[Payloads], purpose: str
) -> None:
    response = await consent.http.post(
        "/v1/consents", json=payloads.research(purpose=purpose), headers=consent.as_client()
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/purpose-never-allowed")
    assert [e["field"] for e in problem["errors"]] == ["body.purpose"]
    assert await recorded_for(consent) == (0, 0)


async def test_stale_policy_version_is_refused_with_409_naming_the_current_one(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    response = await consent.http.post(
        "/v1/consents",
        json=payloads.share_with_provider(policy_version="2025-06"),
        headers=consent.as_client(),
    )
    assert response.status_code == 409
    assert response.json()["current_policy_version"] == "2026-01"
    listed = await consent.http.get("/v1/consents", headers=consent.as_client())
    assert listed.json()["items"] == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"recipient_id": None}, "body.recipient_id"),
        ({"recipient_id": str(uuid.uuid4())}, "body.recipient_id"),
        ({"data_categories": ["billing.payment_methods"]}, "body.data_categories"),
        ({"data_categories": ["diary"]}, "body.data_categories.0"),
        ({"data_categories": []}, "body.data_categories"),
        ({"policy_version": "1999-01"}, "body.policy_version"),
        ({"policy_hash": "0" * 64}, "body.policy_hash"),
        ({"method": "unspecified"}, "body.method"),
        ({"purpose": "Share With Provider"}, "body.purpose"),
        ({"recipient": "typo"}, "body.recipient"),
    ],
)
async def test_bad_grant_is_answered_with_the_field_and_records_nothing(
    consent: ConsentService, payloads: type[Payloads], overrides: dict[str, Any], field: str
) -> None:
    response = await consent.http.post(
        "/v1/consents", json=payloads.share_with_provider(**overrides), headers=consent.as_client()
    )
    # A recipient that does not exist is 404 naming the field (a reference to nothing, as for
    # messaging's therapist); the rest 422, a stale policy 409.
    assert response.status_code in (404, 409, 422)
    problem = response.json()
    if response.status_code == 409:
        assert problem["type"].endswith("/policy-hash-mismatch")
    else:
        assert field in [e["field"] for e in problem["errors"]]
    assert await recorded_for(consent) == (0, 0)


async def test_only_signed_in_clients_grant(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    anonymous = await consent.http.post("/v1/consents", json=payloads.research())
    therapist = await consent.http.post(
        "/v1/consents",
        json=payloads.research(),
        headers=consent.minter.headers(uuid.uuid4(), "therapist"),
    )
    assert (anonymous.status_code, therapist.status_code) == (401, 403)


async def test_a_token_of_a_session_identity_ended_is_refused(consent: ConsentService) -> None:
    ended, other = uuid.uuid4(), uuid.uuid4()
    tokens = {
        session: {
            "Authorization": f"Bearer {consent.minter.token(consent.client_id, session_id=session)}"
        }
        for session in (ended, other)
    }
    assert (await consent.http.get("/v1/consents", headers=tokens[ended])).status_code == 200

    await consent.minter.revoke_sessions(consent.client_id, ended)

    async def refused() -> bool:
        answer = await consent.http.get("/v1/consents", headers=tokens[ended])
        return answer.status_code == 401

    await eventually(refused)
    answer = await consent.http.get("/v1/consents", headers=tokens[ended])
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert answer.json()["detail"] == "The access token has been revoked."
    # The person's other session, and tokens that name no session, still work.
    assert (await consent.http.get("/v1/consents", headers=tokens[other])).status_code == 200
    assert (await consent.http.get("/v1/consents", headers=consent.as_client())).status_code == 200


async def test_withdrawal_is_one_call_and_takes_effect_at_once(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.share_with_provider())
    url = f"/v1/consents/{granted['consent_id']}"

    assert (await consent.http.delete(url, headers=consent.as_client())).status_code == 204

    shown = (await consent.http.get(url, headers=consent.as_client())).json()
    assert shown["status"] == "revoked" and shown["revoke_reason"] == "subject_withdrew"
    validity = (await consent.http.get(f"{url}/validity", headers=consent.as_client())).json()
    assert validity["valid"] is False
    # Withdrawing again is harmless.
    assert (await consent.http.delete(url, headers=consent.as_client())).status_code == 204


async def test_another_person_cannot_see_or_withdraw_a_consent_but_compliance_can_read_it(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.research())
    url = f"/v1/consents/{granted['consent_id']}"
    stranger = consent.as_client(uuid.uuid4())

    assert (await consent.http.get(url, headers=stranger)).status_code == 404
    assert (await consent.http.get(f"{url}/receipt", headers=stranger)).status_code == 404
    assert (await consent.http.delete(url, headers=stranger)).status_code == 404
    compliance = consent.as_compliance()
    assert (await consent.http.get(f"{url}/receipt", headers=compliance)).status_code == 200
    still = (await consent.http.get(f"{url}/validity", headers=compliance)).json()
    assert still["valid"] is True


async def test_validity_answers_for_moments_in_the_past(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.share_with_provider())
    await asyncio.sleep(0.05)
    url = f"/v1/consents/{granted['consent_id']}"
    await consent.http.delete(url, headers=consent.as_client())
    revoked_at = datetime.fromisoformat(
        (await consent.http.get(url, headers=consent.as_client())).json()["revoked_at"]
    )
    granted_at = datetime.fromisoformat(granted["granted_at"])
    compliance = consent.as_compliance()

    async def valid_at(moment: datetime) -> bool:
        response = await consent.http.get(
            f"{url}/validity", params={"at": moment.isoformat()}, headers=compliance
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["valid"])

    assert await valid_at(granted_at - timedelta(seconds=1)) is False
    assert await valid_at(granted_at) is True
    assert await valid_at(granted_at + (revoked_at - granted_at) / 2) is True
    assert await valid_at(revoked_at) is False

    between = (granted_at + (revoked_at - granted_at) / 2).isoformat()
    then = await consent.http.get(
        f"/v1/subjects/{consent.client_id}/consents",
        params={"valid_at": between},
        headers=compliance,
    )
    assert [c["consent_id"] for c in then.json()["items"]] == [granted["consent_id"]]
    now = await consent.http.get(
        f"/v1/subjects/{consent.client_id}/consents",
        params={"valid_at": datetime.now(UTC).isoformat()},
        headers=compliance,
    )
    assert now.json()["items"] == []


async def test_validity_time_without_offset_is_refused_naming_the_parameter(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await consent.grant(payloads.research())
    response = await consent.http.get(
        f"/v1/consents/{granted['consent_id']}/validity",
        params={"at": "2026-03-01T09:00:00"},
        headers=consent.as_client(),
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["query.at"]


async def test_consents_list_pages_with_a_cursor(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    ids = [(await consent.grant(payloads.research()))["consent_id"] for _ in range(3)]
    first = (
        await consent.http.get("/v1/consents", params={"limit": 2}, headers=consent.as_client())
    ).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = (
        await consent.http.get(
            "/v1/consents",
            params={"limit": 2, "cursor": first["next_cursor"]},
            headers=consent.as_client(),
        )
    ).json()
    assert second["next_cursor"] is None
    listed = [c["consent_id"] for c in first["items"] + second["items"]]
    assert listed == list(reversed(ids))
    bad = await consent.http.get(
        "/v1/consents", params={"cursor": "nope"}, headers=consent.as_client()
    )
    assert [e["field"] for e in bad.json()["errors"]] == ["query.cursor"]


async def test_concurrent_grants_by_one_person_are_all_recorded(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    granted = await asyncio.gather(*(consent.grant(payloads.research()) for _ in range(6)))
    listed = (await consent.http.get("/v1/consents", headers=consent.as_client())).json()
    assert {c["consent_id"] for c in listed["items"]} == {g["consent_id"] for g in granted}


async def test_grant_that_keeps_meeting_other_writers_gives_up_with_409_concurrent_change(
    consent: ConsentService, payloads: type[Payloads], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def another_writer_got_there_first(conn: Any, ledger: Any) -> None:
        raise ConcurrencyConflict(ledger.subject_id, ledger.version)

    monkeypatch.setattr(consent.deps.ledgers, "save", another_writer_got_there_first)
    response = await consent.http.post(
        "/v1/consents", json=payloads.research(), headers=consent.as_client()
    )
    assert response.status_code == 409
    assert response.json()["type"] == problem_type("concurrent-change")
    assert await recorded_for(consent) == (0, 0)


async def test_compliance_registers_a_recipient_that_consents_can_then_name(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    body = {
        "name": "Lakeside Day Clinic",
        "kind": "healthcare_provider",
        "purposes": ["share_with_provider"],
    }
    refused = await consent.http.post("/v1/recipients", json=body, headers=consent.as_client())
    assert refused.status_code == 403

    created = await consent.http.post("/v1/recipients", json=body, headers=consent.as_compliance())
    assert created.status_code == 201
    recipient_id = created.json()["recipient_id"]
    again = await consent.http.post("/v1/recipients", json=body, headers=consent.as_compliance())
    assert again.status_code == 409
    research_only = await consent.http.post(
        "/v1/recipients",
        json={**body, "name": "Other", "purposes": ["research"]},
        headers=consent.as_compliance(),
    )
    assert [e["field"] for e in research_only.json()["errors"]] == ["body.purposes"]

    listed = await consent.http.get("/v1/recipients", headers=consent.as_client())
    names = {r["name"] for r in listed.json()["items"]}
    assert {"Northside Community Health Clinic", "Lakeside Day Clinic"} <= names
    await consent.grant(payloads.share_with_provider(recipient_id=recipient_id))


async def test_receipt_key_is_sealed_at_rest_and_survives_a_restart(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    first = await consent.grant(payloads.research())
    async with consent.service.engine.connect() as conn:
        row = (await conn.execute(select(receipt_signing_keys))).one()
        raw = await consent.service.keyring.decrypt(
            conn, RECEIPT_KEYS_SUBJECT, RECEIPT_KEYS_CATEGORY, row.kid, row.sealed_private_key
        )
    assert isinstance(raw, bytes) and raw not in bytes(row.sealed_private_key)

    restarted = create_app(consent.settings)
    async with serving(restarted) as http:
        await consent.minter.wait_until_known(restarted.state.service.engine)
        response = await http.post(
            "/v1/consents", json=payloads.research(), headers=consent.as_client()
        )
        jwks = (await http.get("/v1/receipt-keys")).json()
    assert response.status_code == 201
    assert [k["kid"] for k in jwks["keys"]] == [row.kid]
    verify_receipt(first["receipt"]["jws"], jwks)
    verify_receipt(response.json()["receipt"]["jws"], jwks)


async def test_a_grant_writes_its_consents_row_once_receipt_included(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    writes: list[str] = []

    def note_write(*args: Any) -> None:
        words = args[2].split()  # the statement
        if words[0] in ("INSERT", "UPDATE", "DELETE") and "consents" in words[:3]:
            writes.append(words[0])

    engine = consent.service.engine.sync_engine
    event.listen(engine, "before_cursor_execute", note_write)
    try:
        granted = await consent.grant(payloads.research())
    finally:
        event.remove(engine, "before_cursor_execute", note_write)

    assert writes == ["INSERT"]
    async with consent.service.engine.connect() as conn:
        row = (
            await conn.execute(
                select(consents).where(consents.c.consent_id == granted["consent_id"])
            )
        ).one()
    assert row.receipt_jws == granted["receipt"]["jws"]


async def test_projection_rebuilt_from_the_ledger_streams_is_the_same(
    consent: ConsentService, payloads: type[Payloads]
) -> None:
    kept = await consent.grant(payloads.research())
    withdrawn = await consent.grant(payloads.share_with_provider())
    await consent.http.delete(
        f"/v1/consents/{withdrawn['consent_id']}", headers=consent.as_client()
    )
    before = (await consent.http.get("/v1/consents", headers=consent.as_client())).json()

    # Damage the read model: the rebuild must restore it from the ledger streams alone.
    async with consent.service.engine.begin() as conn:
        await conn.execute(update(consents).values(revoked_at=None, revoke_reason=None))
        await conn.execute(delete(consents).where(consents.c.consent_id == kept["consent_id"]))
    # The operator's rebuild (`python -m confide_toolkit.read_models rebuild consent`).
    rebuilt = await rebuild_read_model(
        consent.service.engine, consent.service.read_models()["consents"]
    )
    assert not rebuilt.unchanged

    after = (await consent.http.get("/v1/consents", headers=consent.as_client())).json()
    assert after == before
    assert {c["consent_id"] for c in after["items"]} == {
        kept["consent_id"],
        withdrawn["consent_id"],
    }
