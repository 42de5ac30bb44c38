"""Scenario 8, erasure (issue 19, item 8): one person's erasure, from their request to the
certificate retention issues, across every owner of the RUNNING suite, one at a time at idle.

Where: the services `make up` started (identity, messaging, billing, consent, retention, audit),
at the URLs of `CONFIDE_<NAME>_URL` (`.stack/stack.env`), with their databases and the broker as
they are; nothing is started here. When the suite does not answer, the scenario says so in its
figure instead of failing the run (`make bench` starts the broker and PostgreSQL only).

Set-up, one person after the other: a client registers at identity; a card is added at billing
(the sandbox's approving Visa 4242 4242 4242 4242) with a token minted for them (below),
POSTed every `poll_seconds` while billing answers 409 `account-not-open` (it has not yet consumed
the registration); then they sign in, open a conversation with the run's therapist and post a
message (messaging), are charged once (billing: an invoice, a financial record) and grant the
research consent (consent). Compliance's token is minted with `confide_testing.TokenMinter`,
whose key is published on identity.events as the integration tests do: the person's own token
stops working mid-case (identity ends their sessions when it shreds the profile), so the case is
followed as compliance.

Measured, per person at idle: a fresh sign-in (not timed; retention wants auth_time within
5 minutes), a pause while the suite settles (every service's /readyz reports no record behind),
then the request (`POST /v1/erasure-requests` with the person's token) and the case status
(`GET /v1/erasure-requests/{id}`) every `poll_seconds` until it is `completed`; the certificate
it names is then read (`GET /v1/certificates/{id}`, must answer 200). The figure is request
sent -> completed status received, as the person's client sees it (the poll adds up to
`poll_seconds` plus one status read); beside it retention's own clock, `requested_at` ->
`completed_at` of the status (the certificate is signed in the transaction that records the
last owner's answer). From each category's log: request -> expiry emitted (retention's
scheduler, woken by the request) and emitted -> acknowledged (the owner's `SubjectDataShredded`
time, `answered_at`, on the owner's clock: same machine).

Where the time goes: a reader on retention's and the three owners' topics (no consumer group,
from their end) keeps each case's events' Kafka timestamps, which cut requested_at ->
completed_at into five stages along the owner that answered last (`STAGES`): the scheduler,
retention's pass and relay, the owner's consumer and shredding, the owner's relay, retention's
consumer up to the certificate. The settings that could turn the figure into a poll interval:
retention's CONFIDE_SCHEDULER_INTERVAL (1 s; `deploy/stack.sh` sets none) matters only when a
request's wake-up of the scheduler is lost, which the figure's note counts; CONFIDE_ANSWER_TIMEOUT
(5 min) only when an owner's answer is lost (counted as expiries sent again); the outbox relays
wake on NOTIFY, not on their 1 s fallback poll. The status reads themselves (every 20 ms) share
retention's event loop with its consumers: with 250 ms between reads (`python -m bench.erasure
10 250`) retention's own p50 was the same within the run-to-run noise.

When the certificate comes: a case plans every category when it opens. The categories no law
keeps (identity.profile, messaging.messages, billing.payment_methods) expire at once; session
notes and financial records are retained until their legal end (7 years after the request,
which ends the relationship as a closure would) and do not hold the certificate back: it is
issued once the three owners have answered, and names the retained two, until when and why.
Consent holds no category of retention's: it is part of the set-up (the person consented),
not of the case.

The baseline, measured in the same run and the same way (client side, same `poll_seconds`):
one event through the suite at idle, identity's `AccountRegistered` from the registration's
answer to billing acting on it (the first card accepted). Why this one: an erasure is made of
such hops and nothing else but retention's own commits: request commit -> scheduler wakes ->
`RetentionExpired` through retention's outbox, relay and Kafka to each owner -> the owner
shreds and commits `SubjectDataShredded` -> relay, Kafka, back to retention, which signs the
certificate. That is two hops in sequence (the slowest of three owners on the way out), so at
idle the figure should sit near twice the hop's; a ratio well above that names something else
(a poll interval, a timeout). A plain status read of retention (the poll itself) is reported
beside it as the resolution of both measurements, not as the baseline: it contains no event.

Nothing here asserts a time: the figures are printed, with notes when something is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.figures import Figure, ScenarioResult, percentile
from bench.stack import ROOT, Stack

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

SCENARIO = "8 erasure"
SUITE = ("identity", "messaging", "billing", "consent", "retention", "audit")
IMMEDIATE = ("identity.profile", "messaging.messages", "billing.payment_methods")
"""The categories no law keeps: the certificate waits for their owners' answers."""
APPROVE_VISA = "4242424242424242"
SETUP_TIMEOUT = 120.0
"""How long a set-up step waits for another service's facts (a cold consumer)."""


@dataclass(frozen=True)
class ErasureConfig:
    people: int = 30
    poll_seconds: float = 0.02
    """Between two reads of the case status (and two tries of the baseline's card)."""
    settle_seconds: float = 1.0
    """Pause before each timed step, so the previous one's trailing events are consumed."""
    erasure_timeout: float = 120.0
    """An erasure not completed by then is recorded as such, and the run goes on."""

    @classmethod
    def quick(cls) -> ErasureConfig:
        return cls(people=5)


# -- where the suite is ---------------------------------------------------------------------


def suite_urls() -> dict[str, str]:
    """Each service's URL: `CONFIDE_<NAME>_URL` from the environment (`make bench` sources
    `.stack/stack.env`), otherwise from that file."""
    urls = {name: os.environ.get(f"CONFIDE_{name.upper()}_URL", "") for name in SUITE}
    if not all(urls.values()):
        stack_env = ROOT / ".stack" / "stack.env"
        if stack_env.exists():
            for line in stack_env.read_text().splitlines():
                words = line.removeprefix("export ").strip().split("=", 1)
                for name in SUITE:
                    if len(words) == 2 and words[0] == f"CONFIDE_{name.upper()}_URL":
                        urls[name] = urls[name] or words[1].strip("'\"")
    return {name: url for name, url in urls.items() if url}


async def _not_running(client: httpx.AsyncClient, urls: Mapping[str, str]) -> list[str]:
    """The services of the suite that do not answer /readyz with 200."""
    import httpx

    missing = []
    for name in SUITE:
        if name not in urls:
            missing.append(f"{name} (no CONFIDE_{name.upper()}_URL)")
            continue
        try:
            answer = await client.get(f"{urls[name]}/readyz", timeout=5.0)
        except httpx.HTTPError as error:
            missing.append(f"{name} ({type(error).__name__})")
            continue
        if answer.status_code != 200:
            missing.append(f"{name} ({answer.status_code})")
    return missing


async def _settle(client: httpx.AsyncClient, urls: Mapping[str, str], seconds: float) -> bool:
    """Pause `seconds`, then until every service reports no record behind (True), for at most
    30 s (False: measured anyway)."""
    await asyncio.sleep(seconds)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        behind = 0
        for url in urls.values():
            answer = await client.get(f"{url}/readyz", timeout=10.0)
            catch_up = answer.json().get("catch_up") or {}
            behind += int(catch_up.get("records_behind") or 0)
        if behind == 0:
            return True
        await asyncio.sleep(0.2)
    return False


# -- the case status, read -------------------------------------------------------------------


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000


@dataclass(frozen=True)
class CategoryTiming:
    """One category of a completed case, from its execution log."""

    category: str
    state: str
    """shredded, nothing_held or retained."""
    answered_by: str | None
    attempts: int
    """Expiries emitted for it (more than one: the owner's answer timed out and it was sent
    again)."""
    to_emission_ms: float | None
    """Request -> first expiry emitted (retention's scheduler)."""
    to_answer_ms: float | None
    """First expiry emitted -> the owner's answer (its shredding time)."""
    answered_ms: float | None
    """Request -> the owner's answer."""


def case_timings(status: Mapping[str, Any]) -> tuple[float | None, list[CategoryTiming]]:
    """From a case status as `GET /v1/erasure-requests/{id}` answers it: requested ->
    completed on retention's clock (None while not completed), and each category's timings."""
    requested = _at(status.get("requested_at"))
    categories = []
    for entry in status["categories"]:
        log = entry.get("log") or []
        emitted = [_at(e["at"]) for e in log if e["step"] in ("emitted", "retried")]
        answered = [_at(e["at"]) for e in log if e["step"] in ("acknowledged", "nothing_held")]
        first = emitted[0] if emitted else None
        answer = answered[0] if answered else None
        categories.append(
            CategoryTiming(
                category=str(entry["category"]),
                state=str(entry["state"]),
                answered_by=entry.get("answered_by"),
                attempts=len(emitted),
                to_emission_ms=_ms(requested, first),
                to_answer_ms=_ms(first, answer),
                answered_ms=_ms(requested, answer),
            )
        )
    return _ms(requested, _at(status.get("completed_at"))), categories


# -- talking to the suite --------------------------------------------------------------------


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _until(
    what: str,
    send: Callable[[], Awaitable[httpx.Response]],
    done: int,
    waiting: Callable[[httpx.Response], bool],
    pause: float,
    timeout: float = SETUP_TIMEOUT,
) -> httpx.Response:
    """`send()` again every `pause` while `waiting(answer)` (or 503: a dependency check
    flapping), until it answers `done`; anything else is an error naming the answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await send()
        if answer.status_code == done:
            return answer
        if not (waiting(answer) or answer.status_code == 503) or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {answer.status_code} {answer.text[:400]}")
        await asyncio.sleep(pause)


@dataclass
class Person:
    subject_id: uuid.UUID
    email: str
    password: str
    hop_ms: float
    """AccountRegistered, identity -> billing: the registration's answer -> the card accepted."""


class Suite:
    """The running services, as a client (and compliance) talks to them."""

    def __init__(
        self, client: httpx.AsyncClient, urls: Mapping[str, str], minter: Any, run: str
    ) -> None:
        self.client, self.urls, self.minter, self.run = client, urls, minter, run
        self.staff = uuid.uuid4()

    def url(self, service: str, path: str) -> str:
        return f"{self.urls[service]}{path}"

    def as_compliance(self) -> dict[str, str]:
        # Minted per call: a token lives 5 minutes, a full run longer.
        return _bearer(self.minter.token(self.staff, "compliance"))

    async def wait_for_minted_key(self) -> None:
        """Until billing and retention accept tokens of the minted key (they consume
        identity.events, where it was just published): anything but 401 (or 503)."""
        probe = uuid.uuid4()
        for service, path, role in (
            ("retention", f"/v1/erasure-requests/{probe}", "compliance"),
            ("billing", "/v1/payment-methods", "client"),
        ):
            deadline = time.monotonic() + SETUP_TIMEOUT
            while True:
                answer = await self.client.get(
                    self.url(service, path), headers=_bearer(self.minter.token(probe, role))
                )
                if answer.status_code not in (401, 503):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service} never accepted the minted key: {answer.text}")
                await asyncio.sleep(0.1)

    async def register(self, role: str, label: str) -> tuple[uuid.UUID, str, str, float]:
        """A new account; returns its id, email, password and when its answer came."""
        email = f"bench-{self.run}-{label}@example.org"
        password = f"erasure bench {self.run} {label} lantern"
        answer = await _until(
            f"registering {label}",
            lambda: self.client.post(
                self.url("identity", "/v1/accounts"),
                json={
                    "email": email,
                    "password": password,
                    "display_name": "Bench Erasure",
                    "role": role,
                },
            ),
            201,
            lambda a: False,
            0.5,
        )
        return uuid.UUID(answer.json()["user_id"]), email, password, time.monotonic()

    async def sign_in(self, email: str, password: str) -> str:
        answer = await _until(
            "sign-in",
            lambda: self.client.post(
                self.url("identity", "/v1/sessions"), json={"email": email, "password": password}
            ),
            200,
            lambda a: False,
            0.5,
        )
        return str(answer.json()["access_token"])

    async def set_up(self, i: int, therapist: uuid.UUID, poll: float) -> Person:
        """A client who registered, added a card, messaged, paid and consented."""
        subject, email, password, registered = await self.register("client", f"c{i}")
        minted = _bearer(self.minter.token(subject, "client"))
        card_body = {
            "card_number": APPROVE_VISA,
            "exp_month": 12,
            "exp_year": datetime.now(UTC).year + 3,
            "cvc": "737",
            "cardholder_name": "Bench Erasure",
            "billing_address": {
                "line1": "8 Erasure Street",
                "city": "Forgetton",
                "postal_code": "FG8 8ER",
                "country": "GB",
            },
        }
        card = await _until(
            "adding a card",
            lambda: self.client.post(
                self.url("billing", "/v1/payment-methods"), json=card_body, headers=minted
            ),
            201,
            lambda a: a.status_code == 409 and "account-not-open" in a.text,
            poll,
        )
        hop_ms = (time.monotonic() - registered) * 1000
        headers = _bearer(await self.sign_in(email, password))
        opened = await _until(
            "opening a conversation",
            lambda: self.client.post(
                self.url("messaging", "/v1/conversations"),
                json={"therapist_id": str(therapist)},
                headers=headers,
            ),
            201,
            # 404 (the therapist), 409 account-not-open (the client) or 403 until messaging
            # has consumed the registrations.
            lambda a: (
                a.status_code in (403, 404)
                or (a.status_code == 409 and "account-not-open" in a.text)
            ),
            0.1,
        )
        conversation = opened.json()["conversation_id"]
        await _until(
            "posting a message",
            lambda: self.client.post(
                self.url("messaging", f"/v1/conversations/{conversation}/messages"),
                json={"body": f"a message to forget, {self.run} {i}"},
                headers=headers,
            ),
            201,
            lambda a: False,
            0.1,
        )
        await _until(
            "charging the card",
            lambda: self.client.post(
                self.url("billing", "/v1/charges"),
                json={
                    "payment_method_id": card.json()["payment_method_id"],
                    "amount_cents": 12_000,
                    "currency": "USD",
                    "description": "Session, 50 minutes",
                    "therapist_id": str(therapist),
                },
                headers={**headers, "Idempotency-Key": f"{self.run}-erasure-{i}"},
            ),
            201,
            lambda a: False,
            0.1,
        )
        purposes = (await self.client.get(self.url("consent", "/v1/purposes"))).json()["items"]
        research = next(p for p in purposes if p["purpose"] == "research")
        await _until(
            "granting the research consent",
            lambda: self.client.post(
                self.url("consent", "/v1/consents"),
                json={
                    "purpose": "research",
                    "data_categories": ["messaging.messages"],
                    "policy_version": research["policy_version"],
                },
                headers=headers,
            ),
            201,
            # Until consent has consumed the registration (or the minted key).
            lambda a: a.status_code in (401, 403, 404, 409),
            0.1,
        )
        return Person(subject, email, password, hop_ms)


# -- the events on the broker ---------------------------------------------------------------

TAPPED = ("retention.events", "identity.events", "messaging.events", "billing.events")
STAGES = (
    ("scheduler", "request -> expiry emitted (retention's scheduler, woken by the request)"),
    (
        "relay_out",
        "emitted -> RetentionExpired on Kafka (the rest of the scheduler's pass, retention's "
        "outbox relay)",
    ),
    ("owner", "on Kafka -> the owner's answer (its consumer, the shredding)"),
    ("relay_back", "answer -> SubjectDataShredded on Kafka (the owner's outbox relay)"),
    (
        "retention",
        "answer on Kafka -> completed_at (retention's consumer, up to the certificate)",
    ),
)
"""Where requested_at -> completed_at goes, along the owner that answered last."""


class Tap:
    """Reads the suite's topics from their end as they are written (no consumer group), and
    keeps when each event of an erasure case reached the broker: the Kafka timestamp, set by
    the producing relay when it sends (the same machine's clock as the services')."""

    def __init__(self, kafka_bootstrap: str) -> None:
        self._bootstrap = kafka_bootstrap
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self.seen: dict[str, dict[tuple[str, str], float]] = {}
        """case id -> (event type, category) -> first Kafka timestamp (s since the epoch)."""

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *TAPPED,
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        await self._consumer.start()
        deadline = time.monotonic() + 30.0
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partition of {', '.join(TAPPED)} assigned")
            await asyncio.sleep(0.05)
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)  # the end, now: before any request
        self._task = asyncio.create_task(self._read(), name="erasure-tap")

    async def _read(self) -> None:
        import json

        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                        data = event.get("data") or {}
                        case = data.get("erasure_case_id")
                        kind = str(event["type"]).rsplit(".", 1)[-1]
                    except (ValueError, KeyError, AttributeError, TypeError):
                        continue
                    if case:
                        key = (kind, str(data.get("category") or ""))
                        known = self.seen.setdefault(str(case), {})
                        # Another deployment's owner on the same broker may answer too: the
                        # first answer is the one retention records.
                        known[key] = min(known.get(key, float("inf")), record.timestamp / 1000)

    async def published(self, case_id: str, timeout: float = 5.0) -> dict[tuple[str, str], float]:
        """What the broker got of the case, once its ErasureCompleted is there (or after
        `timeout`)."""
        deadline = time.monotonic() + timeout
        while ("ErasureCompleted", "") not in self.seen.get(case_id, {}):
            if time.monotonic() > deadline or self._task is None or self._task.done():
                break
            await asyncio.sleep(0.02)
        return dict(self.seen.get(case_id, {}))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass(frozen=True)
class Stages:
    last: str
    """The category whose answer reached the broker last."""
    ms: dict[str, float]
    """Each of STAGES, in order; they add up to requested_at -> completed_at."""


def stages(status: Mapping[str, Any], published: Mapping[tuple[str, str], float]) -> Stages | None:
    """requested_at -> completed_at of a completed case cut at its events' arrivals on the
    broker, along the category whose answer reached the broker last (the one that settled the
    case); None when an event of that path was not seen. The stages add up to the whole."""
    requested, completed = _at(status.get("requested_at")), _at(status.get("completed_at"))
    if requested is None or completed is None:
        return None
    answered = {c: t for (kind, c), t in published.items() if kind == "SubjectDataShredded" and c}
    if not answered:
        return None
    last = max(answered, key=lambda c: answered[c])
    entry = next((c for c in status["categories"] if c["category"] == last), None)
    if entry is None or ("RetentionExpired", last) not in published:
        return None
    log = entry.get("log") or []
    emitted = next((_at(e["at"]) for e in log if e["step"] == "emitted"), None)
    answer = next(
        (_at(e["at"]) for e in log if e["step"] in ("acknowledged", "nothing_held")), None
    )
    if emitted is None or answer is None:
        return None
    points = [
        requested.timestamp(),
        emitted.timestamp(),
        published[("RetentionExpired", last)],
        answer.timestamp(),
        answered[last],
        completed.timestamp(),
    ]
    return Stages(
        last, {name: (points[i + 1] - points[i]) * 1000 for i, (name, _) in enumerate(STAGES)}
    )


# -- one erasure -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    observed_ms: float | None
    """Request sent -> completed status received (None: not completed within the timeout)."""
    server_ms: float | None
    """requested_at -> completed_at, retention's clock."""
    request_ms: float
    """The erasure request's own round trip (sent -> 202)."""
    categories: tuple[CategoryTiming, ...]
    certificate: bool
    """The certificate the status names was served (200)."""
    polls: int
    settled: bool
    """The suite reported nothing behind before the request."""
    stages: Stages | None = None
    """`stages()` of the case, from the broker's timestamps."""


async def _erase(
    suite: Suite, person: Person, config: ErasureConfig, poll_ms: list[float], tap: Tap
) -> Erasure:
    """Sign in afresh, let the suite settle, request the erasure and follow the case."""
    fresh = _bearer(await suite.sign_in(person.email, person.password))
    settled = await _settle(suite.client, suite.urls, config.settle_seconds)
    compliance = suite.as_compliance()
    started = time.monotonic()
    requested = await suite.client.post(
        suite.url("retention", "/v1/erasure-requests"), headers=fresh
    )
    request_ms = (time.monotonic() - started) * 1000
    if requested.status_code != 202:
        raise RuntimeError(f"erasure request: {requested.status_code} {requested.text[:400]}")
    case_url = suite.url("retention", f"/v1/erasure-requests/{requested.json()['request_id']}")
    deadline = started + config.erasure_timeout
    polls = 0
    status: dict[str, Any] = {}
    observed: float | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(config.poll_seconds)
        before = time.monotonic()
        answer = await suite.client.get(case_url, headers=compliance)
        poll_ms.append((time.monotonic() - before) * 1000)
        polls += 1
        if answer.status_code != 200:
            continue  # 503 while a dependency check flaps: read again
        status = answer.json()
        if status["status"] == "completed":
            observed = (time.monotonic() - started) * 1000
            break
    certificate = False
    if observed is not None:
        served = await suite.client.get(
            suite.url("retention", f"/v1/certificates/{status['certificate_id']}"),
            headers=suite.as_compliance(),
        )
        certificate = served.status_code == 200 and (
            served.json()["erasure_case_id"] == status["request_id"]
        )
    if not status:
        status = (await suite.client.get(case_url, headers=suite.as_compliance())).json()
    server_ms, categories = case_timings(status)
    cut = stages(status, await tap.published(str(status["request_id"])))
    return Erasure(
        observed, server_ms, request_ms, tuple(categories), certificate, polls, settled, cut
    )


# -- the scenario ----------------------------------------------------------------------------


@dataclass
class ErasureRun:
    config: ErasureConfig
    missing: list[str] = field(default_factory=list)
    """Services that did not answer: nothing was measured."""
    people: list[Person] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    set_up_seconds: float = 0.0
    busy_cores: float | None = None
    """The whole machine's busy cores over the erasures (other work shares it)."""
    scheduler_interval: float = 1.0
    answer_timeout_seconds: float = 300.0


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (Linux: /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    ticks = [int(v) for v in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _retention_defaults() -> tuple[float, float]:
    """Retention's scheduler interval and answer timeout when nothing overrides them
    (deploy/stack.sh sets neither for the dev stack)."""
    # Imported by name: the service package ships no py.typed, and `mypy bench` alone would
    # refuse a plain import of it.
    settings = importlib.import_module("confide_retention.settings").RetentionSettings
    fields = settings.model_fields
    interval = float(fields["scheduler_interval"].default)
    timeout = float(fields["answer_timeout"].default.total_seconds())
    return interval, timeout


async def measure_erasure(config: ErasureConfig, kafka_bootstrap: str) -> ErasureRun:
    """Run scenario 8 against the running suite; what it creates (accounts, cases) stays in
    the suite's databases, erased, as any person's would."""
    import httpx
    from confide_testing import TokenMinter

    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = ErasureRun(config)
    result.scheduler_interval, result.answer_timeout_seconds = _retention_defaults()
    urls = suite_urls()
    run = uuid.uuid4().hex[:8]
    limits = httpx.Limits(max_keepalive_connections=12)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        result.missing = await _not_running(client, urls)
        if result.missing:
            logger.warning("erasure: the suite is not running: %s", ", ".join(result.missing))
            result.missing = ["the suite is not running (`make up`): " + ", ".join(result.missing)]
            return result
        minter = TokenMinter(kafka_bootstrap)
        await minter.publish_key()
        suite = Suite(client, urls, minter, run)
        began = time.monotonic()
        await suite.wait_for_minted_key()
        therapist, *_ = await suite.register("therapist", "therapist")
        for i in range(config.people):
            await _settle(client, urls, config.settle_seconds / 2)
            result.people.append(await suite.set_up(i, therapist, config.poll_seconds))
        result.set_up_seconds = time.monotonic() - began
        logger.info(
            "erasure: %d people set up in %.0f s", len(result.people), result.set_up_seconds
        )
        tap = Tap(kafka_bootstrap)
        await tap.start()
        busy, clock = _busy_seconds(), time.monotonic()
        try:
            for i, person in enumerate(result.people):
                erasure = await _erase(suite, person, config, result.poll_ms, tap)
                result.erasures.append(erasure)
                logger.info(
                    "erasure %d/%d: %s ms (retention's clock %s ms; %s)",
                    i + 1,
                    len(result.people),
                    "—" if erasure.observed_ms is None else f"{erasure.observed_ms:.0f}",
                    "—" if erasure.server_ms is None else f"{erasure.server_ms:.0f}",
                    "no stages"
                    if erasure.stages is None
                    else f"last {erasure.stages.last}: "
                    + ", ".join(f"{k} {v:.0f}" for k, v in erasure.stages.ms.items()),
                )
        finally:
            await tap.stop()
        elapsed = time.monotonic() - clock
        # Settle pauses included: the machine's load while the erasures ran, others' too.
        busy_after = _busy_seconds()
        if busy is not None and busy_after is not None and elapsed:
            result.busy_cores = (busy_after - busy) / elapsed
    return result


def _stats(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return percentile(values, 50), percentile(values, 99), max(values)


def _pair(values: Sequence[float]) -> str:
    p50, p99, _ = _stats(values)
    return f"{_fmt(p50)} ({_fmt(p99)})"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def erasure_result(run: ErasureRun) -> ScenarioResult:
    """Scenario 8's figures, from a run of `measure_erasure`."""
    config = run.config
    if run.missing:
        return ScenarioResult(
            name="erasure",
            figures=[
                Figure(
                    SCENARIO,
                    "request -> certificate",
                    None,
                    "ms",
                    note="not measured: " + ", ".join(run.missing),
                )
            ],
            setup=["Not measured: " + "; ".join(run.missing)],
        )
    erasures = run.erasures
    completed = [e for e in erasures if e.observed_ms is not None]
    observed = [e.observed_ms for e in completed if e.observed_ms is not None]
    server = [e.server_ms for e in completed if e.server_ms is not None]
    hops = [p.hop_ms for p in run.people]
    hop_p50, hop_p99, hop_max = _stats(hops)
    poll_p50 = percentile(run.poll_ms, 50) if run.poll_ms else None

    def timings(category: str) -> list[CategoryTiming]:
        return [t for e in erasures for t in e.categories if t.category == category]

    emission = [
        t.to_emission_ms
        for e in erasures
        for t in e.categories
        if t.category in IMMEDIATE and t.to_emission_ms is not None
    ]
    # A case whose first expiry left more than half a scheduler interval after its request.
    late_cases = sum(
        1
        for e in erasures
        if (
            firsts := [
                t.to_emission_ms
                for t in e.categories
                if t.category in IMMEDIATE and t.to_emission_ms is not None
            ]
        )
        and min(firsts) > run.scheduler_interval * 1000 / 2
    )
    retried = sum(1 for e in erasures for t in e.categories if t.attempts > 1)

    notes = []
    if len(completed) < len(erasures):
        notes.append(
            f"{len(erasures) - len(completed)} of {len(erasures)} erasures not completed "
            f"within {config.erasure_timeout:.0f} s"
        )
    if not all(e.certificate for e in completed):
        notes.append("a completed case's certificate was not served")
    if late_cases:
        notes.append(
            f"in {late_cases} of {len(erasures)} cases the expiries left a scheduler interval "
            f"after the request (CONFIDE_SCHEDULER_INTERVAL, {run.scheduler_interval:g} s): "
            "the request's wake-up was lost (retention's scheduler clears it after a pass, so "
            "a request committed during a periodic pass waits for the next one); the p99 and "
            "max carry that interval"
        )
    if retried:
        notes.append(
            f"{retried} expiries sent again after the owner's answer timed out "
            f"(CONFIDE_ANSWER_TIMEOUT, {run.answer_timeout_seconds:.0f} s)"
        )
    observed_p50, observed_p99, observed_max = _stats(observed)
    server_p50, server_p99, server_max = _stats(server)
    hop = "one event at idle, identity -> billing"
    figures = [
        Figure(
            SCENARIO,
            f"request -> certificate, p50 ({len(observed)} people, one at a time)",
            observed_p50,
            "ms",
            hop_p50,
            hop,
            "for information",
            note="; ".join(notes),
        ),
        Figure(SCENARIO, "request -> certificate, p99", observed_p99, "ms", hop_p99, hop),
        Figure(SCENARIO, "request -> certificate, max", observed_max, "ms", hop_max, hop),
        Figure(
            SCENARIO,
            "requested_at -> completed_at (retention's clock), p50",
            server_p50,
            "ms",
            hop_p50,
            hop,
        ),
        Figure(
            SCENARIO,
            "requested_at -> completed_at (retention's clock), p99",
            server_p99,
            "ms",
            hop_p99,
            hop,
        ),
    ]
    owners = []
    for category in IMMEDIATE:
        found = timings(category)
        answers = [t.to_answer_ms for t in found if t.to_answer_ms is not None]
        p50, p99, _ = _stats(answers)
        figures.append(
            Figure(
                SCENARIO,
                f"{category}: expiry emitted -> owner's answer, p50",
                p50,
                "ms",
                hop_p50,
                hop,
            )
        )
        states = sorted({t.state for t in found})
        by = sorted({t.answered_by for t in found if t.answered_by})
        owners.append(
            f"{category} answered by {', '.join(by) or '—'} ({', '.join(states)}): emitted -> "
            f"answered p50 {_fmt(p50)} ms, p99 {_fmt(p99)} ms"
        )
    emission_p50, emission_p99, emission_max = _stats(emission)
    retained = sorted({t.category for e in erasures for t in e.categories if t.state == "retained"})
    cuts = [e.stages for e in erasures if e.stages is not None]
    lasts = {c: sum(1 for cut in cuts if cut.last == c) for c in IMMEDIATE}
    stage_lines = [f"{label} {_pair([c.ms[name] for c in cuts])}" for name, label in STAGES]
    stage_p50 = {
        label: percentile([c.ms[name] for c in cuts], 50) for name, label in STAGES if cuts
    }
    largest = max(stage_p50, key=lambda label: stage_p50[label]) if stage_p50 else None
    if largest is not None:
        figures.append(
            Figure(
                SCENARIO,
                f"largest stage, p50: {largest}",
                stage_p50[largest],
                "ms",
                hop_p50,
                hop,
            )
        )
    setup = [
        "Against the running suite (`make up`: identity, messaging, billing, consent, "
        "retention, audit, each `python -m confide_<name>` on the dev stack's broker and "
        "PostgreSQL); nothing started or stopped by the bench.",
        f"Set-up ({run.set_up_seconds:.0f} s), {len(run.people)} people one after the other: "
        "registered (identity), a card added (billing, the sandbox's approving Visa "
        "4242 4242 4242 4242), signed in, a conversation opened with the run's therapist and "
        "a message posted (messaging), charged once (billing: an invoice), the research "
        "consent granted (consent).",
        f"Baseline, one event through the suite at idle: the registration's answer -> the "
        f"first card billing accepts (billing answers 409 account-not-open until it has "
        f"consumed `AccountRegistered`), tried every {config.poll_seconds * 1000:.0f} ms: "
        f"p50 {_fmt(hop_p50)} ms, p99 {_fmt(hop_p99)} ms, max {_fmt(hop_max)} ms. An erasure "
        "is two such hops in sequence (retention -> the slowest of three owners -> "
        "retention) plus retention's own commits.",
        f"Each erasure: a fresh sign-in, {config.settle_seconds:g} s pause and every "
        "service's /readyz reporting no record behind"
        + (
            ""
            if all(e.settled for e in erasures)
            else f" (not reached before {sum(not e.settled for e in erasures)} of them)"
        )
        + f", then the request, then the case status read every "
        f"{config.poll_seconds * 1000:.0f} ms as compliance (one read: p50 {_fmt(poll_p50)} "
        f"ms, {sum(e.polls for e in erasures)} reads in all) until `completed`; its "
        f"certificate served for {sum(e.certificate for e in completed)} of {len(completed)}.",
        f"The certificate waits for {', '.join(IMMEDIATE)} only; "
        f"{', '.join(retained) or 'none'} retained on their legal ground (until their legal "
        "end) and named so in it.",
        f"Request -> expiry emitted (retention's scheduler, woken by the request; "
        f"CONFIDE_SCHEDULER_INTERVAL {run.scheduler_interval:g} s between passes otherwise): "
        f"p50 {_fmt(emission_p50)} ms, p99 {_fmt(emission_p99)} ms, max "
        f"{_fmt(emission_max)} ms; {late_cases} of {len(erasures)} cases later than half the "
        "interval. Owners: " + "; ".join(owners) + f"; {retried} expiries sent again "
        f"(CONFIDE_ANSWER_TIMEOUT {run.answer_timeout_seconds:.0f} s).",
        f"Where retention's requested_at -> completed_at goes ({len(cuts)} of "
        f"{len(erasures)} cases cut at their events' Kafka timestamps, along the owner whose "
        "answer reached the broker last: "
        + ", ".join(f"{c} {n} times" for c, n in lasts.items())
        + "), p50 (p99) ms: "
        + "; ".join(stage_lines)
        + (f". Largest at p50: {largest}." if largest else "."),
        f"Retention's clock, requested_at -> completed_at: p50 {_fmt(server_p50)} ms, p99 "
        f"{_fmt(server_p99)} ms, max {_fmt(server_max)} ms. The observed figure adds the "
        f"request's way in (its whole round trip: p50 (p99) "
        f"{_pair([e.request_ms for e in erasures])} ms) and completed_at -> the next status "
        "read.",
        "The machine is shared: "
        + ("?" if run.busy_cores is None else f"{run.busy_cores:.2f}")
        + f" of {os.cpu_count()} cores busy (all processes) over the erasures.",
    ]
    return ScenarioResult(
        name="erasure",
        figures=figures,
        series={
            "config": config.__dict__,
            "observed_ms": observed,
            "server_ms": server,
            "hop_ms": hops,
            "poll_ms": run.poll_ms,
            "emission_ms": emission,
        },
        setup=setup,
    )


async def run_erasure(stack: Stack, config: ErasureConfig) -> ScenarioResult:
    """Scenario 8, on the suite running on the stack's broker. A failure (a service refusing
    a set-up step) is reported in the figure, so the other scenarios of the run still print."""
    import httpx

    try:
        measured = await measure_erasure(config, stack.kafka_bootstrap)
    except (RuntimeError, httpx.HTTPError) as error:
        logger.exception("erasure: failed")
        measured = ErasureRun(config, missing=[f"failed: {type(error).__name__}: {error}"])
    return erasure_result(measured)


if __name__ == "__main__":
    import sys

    from bench.stack import stack_from_environment

    logging.basicConfig(level=logging.INFO)
    # python -m bench.erasure [PEOPLE [POLL_MS]]: a looser poll shows what the tight one's
    # reads cost retention (its status reads share the event loop with its consumers).
    people = int(sys.argv[1]) if len(sys.argv) > 1 else ErasureConfig.quick().people
    poll = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else ErasureConfig.poll_seconds
    config = ErasureConfig(people=people, poll_seconds=poll)
    outcome = asyncio.run(run_erasure(stack_from_environment(), config))
    for figure in outcome.figures:
        print(figure)
    print("\n".join(outcome.setup))
