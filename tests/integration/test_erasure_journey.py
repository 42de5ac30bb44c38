"""One person's erasure across every owner (issue 19's end-to-end test).

Identity, messaging, billing, consent and retention each run as `python -m confide_<name>` on a
fresh database of their own, all on the real broker, trusting each other only through its
events. A client registers, talks with their therapist (who writes a note), adds a card and
pays, consents to research, then signs in afresh and asks retention to erase them. Afterwards
their profile, messages and card are unreadable through every API and in every database (the
planted values appear in no dump, and each category's data key has a tombstone); the note and
the invoice stay until their test-short legal periods end and then go too; the certificate
verifies with retention's published keys and fails once altered.

A newly started service reads every topic from offset 0 (thousands of records of earlier runs
on the shared broker), so the first step that needs another service's facts waits long, and
every wait that gives up says what the service last answered and what its /readyz said.

The dev stack's owners (identity, messaging, consent on :8001/:8002/:8004) answer retention's
expiries too, "nothing held" for a person they never saw: retention may record either answer, so
the verdict on the data is checked where the data lives, in the owners started here."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from confide_retention.certificates import CERTIFICATE_TYPE
from confide_testing import Infrastructure, TokenMinter
from confide_testing.processes import ServiceDidNotStart, ServiceProcess, ServiceProcesses
from confide_toolkit.database import libpq_url
from confide_toolkit.kek import KekError, LocalKeyFile
from confide_toolkit.signed_documents import DocumentInvalid, verify_document

# Minutes each (every service as its own process, retention's schedule run to its end):
# `make faults` runs them, `make test` leaves them out to keep CI within its budget.
pytestmark = [pytest.mark.integration, pytest.mark.faults]

OWNERS = ("identity", "messaging", "billing", "consent", "retention")
START_SECONDS = 240.0
"""Beyond start_service's 90 s: five services importing at once on two busy cores."""

HTTP_SECONDS = 90.0
"""Per request: a sign-in hashes a password while the service reads the broker's history; on
two loaded cores that alone took over 30 s."""

UNAVAILABLE_SECONDS = 120.0
"""How long a request answered 503 is retried."""

FIRST_CONTACT_SECONDS = 300.0
"""The first step needing another service's facts: that service reads the broker's history."""

NOTES_PERIOD_SECONDS = 20
INVOICES_PERIOD_SECONDS = 30

KEK_ENV = {
    "CONFIDE_KEK_ROTATION_PERIOD": "PT30S",
    "CONFIDE_KEK_BACKUP_RETENTION": "PT30S",
    "CONFIDE_KEK_MAINTENANCE_INTERVAL": "PT5S",
}
"""Every owner (retention too, which states the date in its certificate) on a test-short key
schedule: from `backups_clear_from` on, no copy of an erased key, from a backup, the WAL or a
dead row, unwraps under any KEK version the owner still holds."""

RETENTION_ENV = {
    "CONFIDE_POLICY_PERIODS": (
        f'{{"messaging.session_notes": "PT{NOTES_PERIOD_SECONDS}S",'
        f' "billing.financial_records": "PT{INVOICES_PERIOD_SECONDS}S"}}'
    ),
    "CONFIDE_SCHEDULER_INTERVAL": "0.5",
    "CONFIDE_ANSWER_TIMEOUT": "PT15S",
}

IMMEDIATE = ("identity.profile", "messaging.messages", "billing.payment_methods")
IMMEDIATE_STATES = {"shredded", "nothing_held"}
"""An owner's answer: this deployment's, or the dev stack's "nothing held" on the same broker."""
RETAINED = {"messaging.session_notes": "clinical_record", "billing.financial_records": "tax_law"}


class _Patient:
    """httpx, retrying a request answered `503` (a service's 2 s database check flaps on a
    loaded machine, and it then answers 503 database-unavailable with Retry-After for a moment),
    as a client honouring Retry-After does; other answers are returned as they are."""

    retried = 0

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + UNAVAILABLE_SECONDS
        while True:
            answer = httpx.request(method, url, **kwargs)
            if answer.status_code != 503 or time.monotonic() > deadline:
                return answer
            _Patient.retried += 1
            print(f"retrying {method} {url}: 503 {answer.text[:160]}")
            time.sleep(min(float(answer.headers.get("Retry-After", "1")), 2.0))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


http = _Patient()


class Waited:
    """Polls an HTTP call until its answer satisfies `ok`; on giving up, fails with the last
    answer (status and body) and the service's readiness and log tail."""

    def __init__(self, service: ServiceProcess, what: str) -> None:
        self.service, self.what = service, what
        self.answers: list[tuple[float, int, str]] = []

    def until(
        self,
        call: Callable[[], httpx.Response],
        ok: Callable[[httpx.Response], bool],
        timeout: float = 60,
    ) -> httpx.Response:
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                answer = call()
            except httpx.TransportError as error:
                self.answers.append((time.monotonic() - started, 0, repr(error)))
            else:
                if ok(answer):
                    print(
                        f"{self.what}: {answer.status_code} after "
                        f"{time.monotonic() - started:.1f} s ({len(self.answers)} tries before)"
                    )
                    if self.answers:
                        print("\n".join(self.kinds()))
                    return answer
                self.answers.append(
                    (time.monotonic() - started, answer.status_code, answer.text[:300])
                )
            if time.monotonic() > deadline:
                pytest.fail(self.report())
            time.sleep(0.5)

    def kinds(self) -> list[str]:
        """The answers before the awaited one, each kind once with how often."""
        kinds: dict[tuple[int, str], int] = {}
        for _, status, body in self.answers:
            kinds[(status, body[:160])] = kinds.get((status, body[:160]), 0) + 1
        return [f"  {n} x {status}: {body}" for (status, body), n in kinds.items()]

    def report(self) -> str:
        try:
            ready = httpx.get(f"{self.service.url}/readyz", timeout=5).text
        except httpx.HTTPError as error:
            ready = repr(error)
        lines = [f"timed out waiting for {self.what} ({len(self.answers)} answers):"]
        lines += self.kinds()
        lines += [f"last: {self.answers[-1] if self.answers else None}", f"readyz: {ready}"]
        lines += [f"{self.service.name} log tail:", self.service.log()[-2500:]]
        return "\n".join(lines)


def until(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def owners(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[dict[str, ServiceProcess]]:
    """Every owner at once, each started in a thread, as `start_service` starts them (fresh
    database, free port): five processes importing and migrating together on a loaded machine
    take longer than `start_service`'s 90 s, so a slow one is given longer, its log kept
    unbuffered for the failure message."""
    processes = ServiceProcesses(infrastructure.postgres_admin_url, kafka_bootstrap, tmp_path)

    def start(name: str) -> ServiceProcess:
        env = {
            "PYTHONUNBUFFERED": "1",
            **KEK_ENV,
            **(RETENTION_ENV if name == "retention" else {}),
        }
        try:
            return processes.start(name, env)
        except ServiceDidNotStart:
            service = next(s for s in processes.started if s.name == name)
            service.wait_ready(within=START_SECONDS)
            return service

    try:
        with ThreadPoolExecutor(len(OWNERS)) as pool:
            futures = {name: pool.submit(start, name) for name in OWNERS}
            try:
                started = {name: future.result() for name, future in futures.items()}
            except ServiceDidNotStart as error:
                pytest.fail(str(error))
        yield started
    finally:
        processes.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(identity: ServiceProcess, email: str, password: str) -> httpx.Response:
    return http.post(
        f"{identity.url}/v1/sessions", json={"email": email, "password": password}, timeout=30
    )


def register(identity: ServiceProcess, role: str, name: str) -> tuple[uuid.UUID, str, str]:
    email = f"erasure-{uuid.uuid4().hex[:10]}@example.org"
    password = f"purple walrus {uuid.uuid4().hex[:8]} lantern"
    answer = http.post(
        f"{identity.url}/v1/accounts",
        json={"email": email, "password": password, "display_name": name, "role": role},
        timeout=HTTP_SECONDS,
    )
    assert answer.status_code == 201, answer.text
    return uuid.UUID(answer.json()["user_id"]), email, password


def token(identity: ServiceProcess, email: str, password: str) -> str:
    answer = Waited(identity, "a sign-in").until(
        lambda: sign_in(identity, email, password),
        lambda r: r.status_code == 200,
        FIRST_CONTACT_SECONDS,
    )
    return str(answer.json()["access_token"])


def database_dump(service: ServiceProcess) -> str:
    """Every row of the service's database, as text (pg_dump --data-only)."""
    dumped = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", libpq_url(service.database_url)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dumped.stdout.decode(errors="replace")


def tombstones(service: ServiceProcess, subject_id: uuid.UUID) -> set[str]:
    """The categories whose data key of this person the service shredded."""
    engine = sqlalchemy.create_engine(service.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT category FROM data_key_tombstones WHERE subject_id = :subject"
                ),
                {"subject": subject_id},
            )
            return {str(row[0]) for row in rows}
    finally:
        engine.dispose()


def wrapped_keys(service: ServiceProcess, subject_id: uuid.UUID) -> list[tuple[int, bytes]]:
    """What a backup taken now holds of the person's data keys: each one's KEK version and
    wrapped bytes."""
    engine = sqlalchemy.create_engine(service.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT kek_version, wrapped_key FROM data_keys WHERE subject_id = :subject"
                ),
                {"subject": subject_id},
            )
            return [(int(row[0]), bytes(row[1])) for row in rows]
    finally:
        engine.dispose()


def unwrappable(service: ServiceProcess, keys: list[tuple[int, bytes]]) -> list[int]:
    """The versions among `keys` that the service's key file, every version it still holds,
    can still unwrap."""
    key_file = LocalKeyFile(service.env["CONFIDE_KEK_FILE"])
    opened = []
    for version, wrapped in keys:
        try:
            key_file.unwrap(version, wrapped)
        except KekError:
            continue
        opened.append(version)
    return opened


def test_a_person_who_messaged_paid_and_consented_is_erased_everywhere(
    owners: dict[str, ServiceProcess], kafka_bootstrap: str
) -> None:
    services = owners
    compliance = TokenMinter(kafka_bootstrap)
    asyncio.run(compliance.publish_key())
    identity, messaging, billing = services["identity"], services["messaging"], services["billing"]
    consent, retention = services["consent"], services["retention"]
    staff = uuid.uuid4()

    def as_compliance() -> dict[str, str]:
        # Minted per call: a token lives 5 minutes, the journey longer.
        return compliance.headers(staff, "compliance")

    marker = uuid.uuid4().hex[:10]
    planted = {
        "display name": f"Planted Person {marker}",
        "message": f"planted message {marker}",
        "note": f"planted session note {marker}",
        "cardholder": f"Planted Holder {marker}",
        "card number": "5555555555554444",
        "charge description": f"planted session fee {marker}",
    }
    client, client_email, client_password = register(identity, "client", planted["display name"])
    planted["email"] = client_email
    therapist, therapist_email, therapist_password = register(identity, "therapist", "Dr Kept")
    as_client = bearer(token(identity, client_email, client_password))
    as_therapist = bearer(token(identity, therapist_email, therapist_password))

    # Messaging: a conversation needs both people known from identity.events (its history).
    opened = Waited(messaging, "messaging to open a conversation").until(
        lambda: http.post(
            f"{messaging.url}/v1/conversations",
            json={"therapist_id": str(therapist)},
            headers=as_client,
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )
    conversation = opened.json()["conversation_id"]
    posted = http.post(
        f"{messaging.url}/v1/conversations/{conversation}/messages",
        json={"body": planted["message"]},
        headers=as_client,
        timeout=HTTP_SECONDS,
    )
    assert posted.status_code == 201, posted.text
    noted = http.post(
        f"{messaging.url}/v1/clients/{client}/notes",
        json={"body": planted["note"]},
        headers=as_therapist,
        timeout=HTTP_SECONDS,
    )
    assert noted.status_code == 201, noted.text

    # Billing: a card, and a charge on it (an invoice: a financial record).
    card = Waited(billing, "billing to add a card").until(
        lambda: http.post(
            f"{billing.url}/v1/payment-methods",
            json={
                "card_number": planted["card number"],
                "exp_month": 12,
                "exp_year": datetime.now(UTC).year + 3,
                "cvc": "123",
                "cardholder_name": planted["cardholder"],
                "billing_address": {
                    "line1": f"{marker} Planted Street",
                    "city": "Springfield",
                    "postal_code": "12345",
                    "country": "US",
                },
            },
            headers=as_client,
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )
    payment_method = card.json()["payment_method_id"]
    planted["street"] = f"{marker} Planted Street"
    charged = Waited(billing, "billing to charge the card").until(
        lambda: http.post(
            f"{billing.url}/v1/charges",
            json={
                "payment_method_id": payment_method,
                "amount_cents": 12000,
                "currency": "USD",
                "description": planted["charge description"],
                "therapist_id": str(therapist),
            },
            headers={**as_client, "Idempotency-Key": str(uuid.uuid4())},
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )
    assert charged.json()["status"] == "succeeded", charged.text

    # Consent: research on their messages.
    research = next(
        p
        for p in http.get(f"{consent.url}/v1/purposes", timeout=HTTP_SECONDS).json()["items"]
        if p["purpose"] == "research"
    )
    Waited(consent, "consent to grant").until(
        lambda: http.post(
            f"{consent.url}/v1/consents",
            json={
                "purpose": "research",
                "data_categories": ["messaging.messages"],
                "policy_version": research["policy_version"],
            },
            headers=as_client,
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )

    # The nightly backup, just before the request: the person's keys as each owner holds them.
    backup = {
        name: wrapped_keys(services[name], client) for name in ("identity", "messaging", "billing")
    }
    assert all(backup.values()), {name: len(keys) for name, keys in backup.items()}

    # The request, with a fresh sign-in: retention verifies identity's token from its events.
    fresh = bearer(token(identity, client_email, client_password))
    requested = Waited(retention, "retention to accept the erasure request").until(
        lambda: http.post(
            f"{retention.url}/v1/erasure-requests", headers=fresh, timeout=HTTP_SECONDS
        ),
        lambda r: r.status_code == 202,
        FIRST_CONTACT_SECONDS,
    )
    request_id = requested.json()["request_id"]

    def status() -> dict[str, Any]:
        answer = Waited(retention, "the erasure status (as compliance)").until(
            lambda: http.get(
                f"{retention.url}/v1/erasure-requests/{request_id}",
                headers=as_compliance(),
                timeout=HTTP_SECONDS,
            ),
            lambda r: r.status_code == 200,
            FIRST_CONTACT_SECONDS,
        )
        return dict(answer.json())

    first = {c["category"]: c for c in status()["categories"]}
    for category, ground in RETAINED.items():
        assert first[category]["state"] == "retained", first[category]
        assert first[category]["ground"] == ground, first[category]
        assert first[category]["retained_until"] is not None, first[category]
        assert any(e["step"] == "retained_until" for e in first[category]["log"]), first[category]
    notes_until = datetime.fromisoformat(first["messaging.session_notes"]["retained_until"])

    def notes() -> list[dict[str, Any]]:
        answer = http.get(
            f"{messaging.url}/v1/clients/{client}/notes", headers=as_therapist, timeout=30
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["items"])

    def messages() -> list[dict[str, Any]]:
        answer = http.get(
            f"{messaging.url}/v1/conversations/{conversation}/messages",
            headers=as_therapist,
            timeout=HTTP_SECONDS,
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json()["items"])

    # What goes at once: the messages, the profile (the password with it), the card.
    until(lambda: all(m["erased"] and m["body"] is None for m in messages()), "messages erased")
    until(
        lambda: sign_in(identity, client_email, client_password).status_code == 401,
        "the old password to stop working",
    )
    me = http.get(f"{identity.url}/v1/accounts/me", headers=fresh, timeout=HTTP_SECONDS)
    assert me.status_code == 401 or (me.status_code == 200 and me.json()["email"] is None), me.text
    cards = http.get(f"{billing.url}/v1/payment-methods", headers=fresh, timeout=HTTP_SECONDS)
    assert cards.status_code == 401 or cards.json()["items"] == [], cards.text
    until(
        lambda: (
            {"identity.profile"} <= tombstones(identity, client)
            and {"messaging.messages"} <= tombstones(messaging, client)
            and {"billing.payment_methods"} <= tombstones(billing, client)
        ),
        "the immediate categories' keys to be shredded",
    )
    # The note the law keeps is still readable until its period ends.
    if datetime.now(UTC) < notes_until:
        assert [n["body"] for n in notes()] == [planted["note"]]
        assert "messaging.session_notes" not in tombstones(messaging, client)

    # The case completes once what goes at once is gone: its certificate names what the law
    # keeps, until when and why (observed: completed 18 s before the notes' legal end).
    def completed() -> dict[str, Any] | None:
        body = status()
        return body if body["status"] == "completed" else None

    done = until(completed, "the case to complete", timeout=180)
    for category in done["categories"]:
        expected = {"retained"} if category["category"] in RETAINED else IMMEDIATE_STATES
        assert category["state"] in expected, category

    # Then the retained categories go too, at their legal end.
    until(
        lambda: all(n["erased"] and n["body"] is None for n in notes()),
        "the note erased",
        timeout=INVOICES_PERIOD_SECONDS + 180,
    )
    assert datetime.now(UTC) >= notes_until
    until(
        lambda: all(c["state"] in IMMEDIATE_STATES for c in status()["categories"]),
        "the status to show the retained categories shredded",
        timeout=INVOICES_PERIOD_SECONDS + 180,
    )
    until(
        lambda: (
            {"messaging.session_notes"} <= tombstones(messaging, client)
            and {"billing.financial_records"} <= tombstones(billing, client)
        ),
        "the retained categories' keys to be shredded",
    )
    assert {"messaging.messages", "messaging.session_notes"} <= tombstones(messaging, client)
    assert {"billing.payment_methods", "billing.financial_records"} <= tombstones(billing, client)
    assert "identity.profile" in tombstones(identity, client)

    # In no database a planted value in plaintext.
    for service in services.values():
        dump = database_dump(service)
        found = [name for name, value in planted.items() if value in dump]
        assert not found, f"{service.name}'s database holds the planted {found}"

    # From the date the certificate states on, the backup taken before the erasure holds keys
    # no KEK version any owner still has can unwrap.
    clear_from = datetime.fromisoformat(done["backups_clear_from"])
    time.sleep(max(0.0, (clear_from - datetime.now(UTC)).total_seconds()))
    still_open = {name: unwrappable(services[name], keys) for name, keys in backup.items()}
    assert not any(still_open.values()), f"at {clear_from} these versions unwrap: {still_open}"

    # The certificate verifies with retention's published keys, and not once altered.
    certificate = http.get(
        f"{retention.url}/v1/certificates/{done['certificate_id']}",
        headers=as_compliance(),
        timeout=HTTP_SECONDS,
    )
    assert certificate.status_code == 200, certificate.text
    jws = certificate.json()["jws"]
    jwks = http.get(f"{retention.url}/v1/signing-keys", timeout=HTTP_SECONDS).json()
    claims = verify_document(jws, jwks, CERTIFICATE_TYPE)
    assert claims["sub"] == str(client)
    header, payload, signature = jws.split(".")
    altered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    with pytest.raises(DocumentInvalid):
        verify_document(f"{header}.{altered}.{signature}", jwks, CERTIFICATE_TYPE)


def test_a_legal_hold_stops_the_erasure_and_an_owner_down_shreds_once_back(
    owners: dict[str, ServiceProcess], kafka_bootstrap: str
) -> None:
    identity, messaging, retention = owners["identity"], owners["messaging"], owners["retention"]
    compliance = TokenMinter(kafka_bootstrap)
    asyncio.run(compliance.publish_key())
    staff = uuid.uuid4()

    def as_compliance() -> dict[str, str]:
        return compliance.headers(staff, "compliance")

    client, client_email, client_password = register(identity, "client", "Held Person")
    therapist, therapist_email, therapist_password = register(identity, "therapist", "Dr Held")
    as_client = bearer(token(identity, client_email, client_password))
    as_therapist = bearer(token(identity, therapist_email, therapist_password))
    opened = Waited(messaging, "messaging to open a conversation").until(
        lambda: http.post(
            f"{messaging.url}/v1/conversations",
            json={"therapist_id": str(therapist)},
            headers=as_client,
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )
    conversation = opened.json()["conversation_id"]
    said = f"held message {uuid.uuid4().hex[:10]}"
    posted = http.post(
        f"{messaging.url}/v1/conversations/{conversation}/messages",
        json={"body": said},
        headers=as_client,
        timeout=HTTP_SECONDS,
    )
    assert posted.status_code == 201, posted.text

    held = Waited(retention, "retention to place a legal hold").until(
        lambda: http.post(
            f"{retention.url}/v1/legal-holds",
            json={"subject_id": str(client), "reason": "litigation"},
            headers=as_compliance(),
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 201,
        FIRST_CONTACT_SECONDS,
    )
    hold_id = held.json()["hold_id"]
    messaging.kill()  # down before anything of the person's is emitted

    requested = http.post(
        f"{retention.url}/v1/erasure-requests",
        json={"subject_id": str(client)},
        headers=as_compliance(),
        timeout=HTTP_SECONDS,
    )
    assert requested.status_code == 202, requested.text
    request_id = requested.json()["request_id"]

    def status() -> dict[str, Any]:
        answer = http.get(
            f"{retention.url}/v1/erasure-requests/{request_id}",
            headers=as_compliance(),
            timeout=HTTP_SECONDS,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    # While the hold stands nothing expires: several scheduler passes later, all still held.
    time.sleep(5)
    now = status()
    assert now["legal_hold"] is True and now["status"] != "completed", now
    for category in now["categories"]:
        # Those the law keeps say so (until their legal end); the rest are held.
        expected = "retained" if category["category"] in RETAINED else "held"
        assert category["state"] == expected, category
        assert not any(e["step"] == "emitted" for e in category["log"]), category
    assert sign_in(identity, client_email, client_password).status_code == 200
    assert tombstones(identity, client) == set()

    released = http.delete(
        f"{retention.url}/v1/legal-holds/{hold_id}", headers=as_compliance(), timeout=30
    )
    assert released.status_code == 204, released.text
    until(
        lambda: sign_in(identity, client_email, client_password).status_code == 401,
        "the profile shredded once the hold is released",
    )
    until(
        lambda: all(
            any(e["step"] == "emitted" for e in c["log"])
            for c in status()["categories"]
            if c["category"] == "messaging.messages"
        ),
        "the messages' expiry to be emitted while messaging is down",
    )
    assert "messaging.messages" not in tombstones(messaging, client)

    # Back: it reads the expiry it missed and shreds before (or as) it serves again.
    try:
        messaging.start()
    except ServiceDidNotStart:
        messaging.wait_ready(within=START_SECONDS)
    until(
        lambda: "messaging.messages" in tombstones(messaging, client),
        "messaging to shred the messages once back",
        timeout=FIRST_CONTACT_SECONDS,
    )
    page = Waited(messaging, "the messages after the restart").until(
        lambda: http.get(
            f"{messaging.url}/v1/conversations/{conversation}/messages",
            headers=as_therapist,
            timeout=HTTP_SECONDS,
        ),
        lambda r: r.status_code == 200,
    )
    assert [(m["erased"], m["body"]) for m in page.json()["items"]] == [(True, None)]
    assert said not in database_dump(messaging)
