"""The load generator of the fault scenarios: people registering, signing in, granting consents
and closing their accounts through the public HTTP API, with each answer tallied."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

PASSWORD = "fault scenario correct horse battery"

CATCH_UP_SECONDS = 300
"""How long a service just started may take to learn what it needs from the topics (identity's
signing keys, the people): a new consumer group reads each topic from its first record, and the
broker of a long test run holds many."""


@dataclass
class Tally:
    """What the API answered: acknowledged values (2xx) and every status seen."""

    attempted: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    unreachable: int = 0
    # A 503 must say when to come back (Retry-After); counted when it does not.
    missing_retry_after: int = 0

    def answer(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def unavailable(self) -> int:
        return self.statuses.get(503, 0)


async def steady(
    stop: asyncio.Event, workers: int, operation: Callable[[int], Awaitable[None]], cap: float = 90
) -> None:
    """Run `operation(n)` from `workers` concurrent workers until `stop` is set (or `cap`
    seconds have passed: load stops by itself)."""
    deadline = time.monotonic() + cap
    counter = iter(range(10**9))

    async def worker() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            await operation(next(counter))

    await asyncio.gather(*(worker() for _ in range(workers)))


async def after_fault(
    stop: asyncio.Event, fault: Awaitable[None], *, before: float, after: float
) -> None:
    """Let the load run `before` seconds, strike with `fault` (which returns once the faulted
    part is back), let the load run `after` more seconds, then stop it."""
    await asyncio.sleep(before)
    await fault
    await asyncio.sleep(after)
    stop.set()


async def register(
    http: httpx.AsyncClient, identity_url: str, email: str, tally: Tally
) -> str | None:
    """Register a client; the user id when identity acknowledged it."""
    tally.attempted += 1
    try:
        answer = await http.post(
            f"{identity_url}/v1/accounts",
            json={"email": email, "password": PASSWORD, "display_name": "Fault", "role": "client"},
        )
    except httpx.TransportError:
        tally.unreachable += 1
        await asyncio.sleep(0.2)
        return None
    tally.answer(answer.status_code)
    if answer.status_code == 503 and "retry-after" not in answer.headers:
        tally.missing_retry_after += 1
    if answer.status_code != 201:
        await asyncio.sleep(0.2)
        return None
    user_id = str(answer.json()["user_id"])
    tally.acknowledged[email] = user_id
    return user_id


async def retry(
    what: str,
    attempt: Callable[[], Awaitable[httpx.Response]],
    ok: int,
    within: float = CATCH_UP_SECONDS,
) -> httpx.Response:
    """`attempt` until it answers `ok` (an event still crossing Kafka, a service restarting)."""
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = await attempt()
            if answer.status_code == ok:
                return answer
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as error:
            last = repr(error)
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: still {last} after {within} s")


async def signed_in_client(
    http: httpx.AsyncClient, identity_url: str, prefix: str
) -> tuple[str, dict[str, str]]:
    """A newly registered client's user id and bearer header."""
    return await signed_in(http, identity_url, prefix, role="client")


async def signed_in(
    http: httpx.AsyncClient, identity_url: str, prefix: str, *, role: str
) -> tuple[str, dict[str, str]]:
    """A newly registered person's user id and bearer header, in the role named."""
    email = f"{prefix}-{uuid.uuid4().hex[:12]}@example.org"
    registered = await retry(
        "register",
        lambda: http.post(
            f"{identity_url}/v1/accounts",
            json={"email": email, "password": PASSWORD, "display_name": "Fault", "role": role},
        ),
        201,
    )
    tokens = await retry(
        "sign in",
        lambda: http.post(
            f"{identity_url}/v1/sessions", json={"email": email, "password": PASSWORD}
        ),
        200,
    )
    user_id = str(registered.json()["user_id"])
    return user_id, {"Authorization": f"Bearer {tokens.json()['access_token']}"}


async def message_in_a_new_conversation(
    http: httpx.AsyncClient,
    messaging_url: str,
    client: dict[str, str],
    therapist_id: str,
    body: str,
) -> str:
    """The client opens a conversation with the therapist and posts `body` in it; the
    conversation's id. Messaging must first know both from identity.events, hence the retries."""
    opened = await retry(
        "conversation",
        lambda: http.post(
            f"{messaging_url}/v1/conversations",
            json={"therapist_id": therapist_id},
            headers=client,
        ),
        201,
    )
    conversation_id = str(opened.json()["conversation_id"])
    await retry(
        "message",
        lambda: http.post(
            f"{messaging_url}/v1/conversations/{conversation_id}/messages",
            json={"body": body},
            headers={**client, "Idempotency-Key": str(uuid.uuid4())},
        ),
        201,
    )
    return conversation_id


async def clients_with_consents(
    http: httpx.AsyncClient, identity_url: str, consent_url: str, people: int
) -> list[tuple[str, dict[str, str], str]]:
    """`people` newly registered clients, each signed in and with a research consent granted:
    (user id, bearer header, consent id) each."""
    purposes = (
        await retry("purposes", lambda: http.get(f"{consent_url}/v1/purposes"), 200)
    ).json()["items"]
    version = next(p["policy_version"] for p in purposes if p["purpose"] == "research")
    gate = asyncio.Semaphore(4)

    async def client_with_consent() -> tuple[str, dict[str, str], str]:
        async with gate:
            user_id, auth = await signed_in_client(http, identity_url, "fault")
            granted = await retry(
                "grant",
                lambda: http.post(
                    f"{consent_url}/v1/consents",
                    json={
                        "purpose": "research",
                        "data_categories": ["messaging.messages"],
                        "policy_version": version,
                    },
                    headers=auth,
                ),
                201,
            )
            return user_id, auth, str(granted.json()["consent_id"])

    return list(await asyncio.gather(*(client_with_consent() for _ in range(people))))
