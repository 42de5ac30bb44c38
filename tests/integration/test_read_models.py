"""The operator's rebuild of each service's read models, run as the operator runs it
(`python -m confide_toolkit.read_models rebuild <service>`, with the service's own settings)
against the running development stack (`.stack/stack.env`), while the services serve: after a
person made data through the public APIs, every rebuild exits 0, reports its read models
unchanged (the projections reproduce exactly what the appends wrote), and the person's data
reads the same through the API afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("identity", "messaging", "billing", "consent", "retention")
SETUP_TIMEOUT = 30.0
STACK_DIR = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
"""Where deploy/stack.sh keeps the running stack (CI runs one of its own elsewhere)."""


def _stack_env() -> dict[str, str]:
    """The stack's URLs and database URLs: from the environment, else from the stack's stack.env."""
    found = {k: v for k, v in os.environ.items() if k.startswith("CONFIDE_")}
    stack_env = STACK_DIR / "stack.env"
    if stack_env.exists():
        for line in stack_env.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line.removeprefix("export ").partition("=")
                found.setdefault(key, value)
    missing = [
        f"CONFIDE_{name.upper()}_{what}" for name in SERVICES for what in ("URL", "DATABASE_URL")
    ]
    missing = [key for key in missing if not found.get(key)]
    if missing:
        pytest.fail(f"the development stack is not running (make up): no {', '.join(missing)}")
    return found


def rebuild(stack: dict[str, str], name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator command, with the service's own settings as deploy/stack.sh gives them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFIDE_")}
    env.update(
        CONFIDE_SERVICE_NAME=name,
        CONFIDE_DATABASE_URL=stack[f"CONFIDE_{name.upper()}_DATABASE_URL"],
        CONFIDE_KEK_FILE=str(STACK_DIR / "keys" / f"{name}.kek.json"),
        CONFIDE_KAFKA_BOOTSTRAP=stack.get("CONFIDE_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    )
    return subprocess.run(
        [sys.executable, "-m", "confide_toolkit.read_models", *args, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _until(
    what: str, send: Callable[[], httpx.Response], done: int, waiting: set[int]
) -> httpx.Response:
    """Send again while the answer is one of `waiting` (another service has not consumed the
    registration yet) or 503, until it is `done`."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    while True:
        answer = send()
        if answer.status_code == done:
            return answer
        if answer.status_code not in waiting | {503} or time.monotonic() > deadline:
            pytest.fail(f"{what}: {answer.status_code} {answer.text[:300]}")
        time.sleep(0.2)


@dataclass
class Made:
    """What one person made through the APIs, and how to read it back per service."""

    reads: dict[str, list[str]]
    headers: dict[str, str]


@pytest.fixture(scope="module")
def stack() -> dict[str, str]:
    return _stack_env()


@pytest.fixture(scope="module")
def made(stack: dict[str, str]) -> Iterator[tuple[httpx.Client, Made]]:
    """A client with a conversation and a message, a card and a charge, a consent; and a second
    client who asked for erasure (a case in retention)."""
    url = {name: stack[f"CONFIDE_{name.upper()}_URL"] for name in SERVICES}
    run = uuid.uuid4().hex[:10]
    with httpx.Client(timeout=20.0) as http:

        def person(role: str, label: str) -> tuple[str, dict[str, str]]:
            email, password = f"rebuild-{run}-{label}@example.org", f"rebuild {run} {label} kite"
            body = {"email": email, "password": password, "display_name": "Re Build", "role": role}
            registered = _until(
                "registering",
                lambda: http.post(f"{url['identity']}/v1/accounts", json=body),
                201,
                set(),
            )
            signed_in = _until(
                "signing in",
                lambda: http.post(
                    f"{url['identity']}/v1/sessions", json={"email": email, "password": password}
                ),
                200,
                set(),
            )
            token = signed_in.json()["access_token"]
            return registered.json()["user_id"], {"Authorization": f"Bearer {token}"}

        therapist, _ = person("therapist", "therapist")
        _, client = person("client", "client")
        conversation = _until(
            "opening a conversation",
            lambda: http.post(
                f"{url['messaging']}/v1/conversations",
                json={"therapist_id": therapist},
                headers=client,
            ),
            201,
            {401, 403, 404, 409},
        ).json()["conversation_id"]
        _until(
            "posting a message",
            lambda: http.post(
                f"{url['messaging']}/v1/conversations/{conversation}/messages",
                json={"body": f"a message to rebuild {run}"},
                headers=client,
            ),
            201,
            set(),
        )
        card = {
            "card_number": "4242424242424242",
            "exp_month": 12,
            "exp_year": datetime.now(UTC).year + 3,
            "cvc": "737",
            "cardholder_name": "Re Build",
            "billing_address": {
                "line1": "1 Replay Road",
                "city": "Projection",
                "postal_code": "RB1 1RB",
                "country": "GB",
            },
        }
        method = _until(
            "adding a card",
            lambda: http.post(f"{url['billing']}/v1/payment-methods", json=card, headers=client),
            201,
            {401, 409},
        ).json()["payment_method_id"]
        _until(
            "charging the card",
            lambda: http.post(
                f"{url['billing']}/v1/charges",
                json={
                    "payment_method_id": method,
                    "amount_cents": 9_000,
                    "currency": "USD",
                    "description": "Session, 50 minutes",
                    "therapist_id": therapist,
                },
                headers={**client, "Idempotency-Key": f"rebuild-{run}"},
            ),
            201,
            set(),
        )
        purposes = http.get(f"{url['consent']}/v1/purposes").json()["items"]
        research = next(p for p in purposes if p["purpose"] == "research")
        _until(
            "granting a consent",
            lambda: http.post(
                f"{url['consent']}/v1/consents",
                json={
                    "purpose": "research",
                    "data_categories": ["messaging.messages"],
                    "policy_version": research["policy_version"],
                },
                headers=client,
            ),
            201,
            {401, 403, 404, 409},
        )
        # Erasure ends an account: a second client asks, so the first one's data stays.
        _, leaving = person("client", "leaving")
        case = _until(
            "requesting erasure",
            lambda: http.post(f"{url['retention']}/v1/erasure-requests", headers=leaving),
            202,
            {401, 403, 404, 409},
        ).json()["request_id"]
        reads = {
            "identity": [f"{url['identity']}/v1/accounts/me"],
            "messaging": [
                f"{url['messaging']}/v1/conversations",
                f"{url['messaging']}/v1/conversations/{conversation}/messages",
            ],
            "billing": [f"{url['billing']}/v1/payment-methods", f"{url['billing']}/v1/charges"],
            "consent": [f"{url['consent']}/v1/consents"],
        }
        # The case moves on meanwhile (the suite erases, and the asker's session ends with
        # the account): its row in the read model is what is looked for.
        reads["retention"] = [case]
        yield http, Made(reads, client)


def _read(http: httpx.Client, made: Made, name: str, stack: dict[str, str]) -> list[object]:
    if name == "retention":
        database = stack["CONFIDE_RETENTION_DATABASE_URL"].replace("+psycopg", "")
        with psycopg.connect(database) as conn:
            found = conn.execute(
                "SELECT case_id FROM erasure_cases WHERE case_id = %s", made.reads[name]
            ).fetchall()
        assert len(found) == 1, "the erasure case is not in the read model"
        return [str(row[0]) for row in found]
    answers = []
    for read in made.reads[name]:
        answer = http.get(read, headers=made.headers)
        assert answer.status_code == 200, f"{read}: {answer.status_code} {answer.text[:300]}"
        answers.append(answer.json())
    return answers


@pytest.mark.parametrize("name", SERVICES)
def test_rebuild_reports_every_read_model_unchanged_and_the_data_reads_the_same(
    stack: dict[str, str], made: tuple[httpx.Client, Made], name: str
) -> None:
    http, person = made
    before = _read(http, person, name, stack)

    done = rebuild(stack, name, "rebuild")

    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-2000:]
    for line in lines:
        assert "events replayed" in line and line.endswith("; unchanged"), line
        assert " 0 events replayed" not in line, line
    assert _read(http, person, name, stack) == before


def test_an_unknown_read_model_is_refused_naming_the_ones_there_are(
    stack: dict[str, str],
) -> None:
    done = rebuild(stack, "consent", "rebuild", "--read-model", "nope")
    assert done.returncode == 2
    assert "consent has no read model 'nope' (it has: consents)" in done.stderr


def test_audit_points_at_its_own_replay(stack: dict[str, str]) -> None:
    done = rebuild(stack, "audit", "list")
    assert done.returncode == 0
    assert "python -m confide_audit replay" in done.stdout
