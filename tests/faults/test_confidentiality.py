"""Distinctive canary values in every personal field, through a whole journey: afterwards none
appears in plaintext in `pg_dumpall`, the PostgreSQL data directory (WAL included), the Kafka
log segments, the services' logs or their exported spans (printed into those logs)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from confide_testing import Infrastructure
from confide_testing.processes import ServiceProcess, ServiceProcesses
from confide_toolkit.database import libpq_url
from sqlalchemy import make_url

from .load import PASSWORD, message_in_a_new_conversation, retry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STACK = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))

# Spans printed into each service's log ("console" exporter), so the logs hold them too.
SPANS = {"CONFIDE_OTEL_EXPORTER": "console"}


def _canaries() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "email": f"canary-email-{tag}@example.org",
        "display name": f"Canaryname {tag}",
        "phone": f"+44 7700 {int(tag[:6], 16) % 900000 + 100000}",
        "address": f"{tag} Canary Wharf Lane",
        "password": f"canary password {tag} battery",
        "message": f"canary message {tag}: I have not slept in days",
        "note": f"canary note {tag}: client disclosed a relapse",
    }


def _files_holding(folder: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except OSError:
            continue
        found.extend(f"{name} in {path}" for name, value in needles.items() if value in content)
    return found


def _dump_all(admin_url: str) -> bytes:
    # pg_dumpall runs pg_dump once per database: the password goes by the environment.
    url = make_url(admin_url)
    return subprocess.run(
        ["pg_dumpall", "-h", str(url.host), "-p", str(url.port), "-U", str(url.username)],
        env={**os.environ, "PGPASSWORD": str(url.password)},
        capture_output=True,
        timeout=300,
        check=True,
    ).stdout


async def _journey(
    identity: ServiceProcess, messaging: ServiceProcess, canaries: dict[str, str]
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        therapist_email = f"therapist-{uuid.uuid4().hex[:10]}@example.org"
        people = {}
        for email, password, role, name in [
            (canaries["email"], canaries["password"], "client", canaries["display name"]),
            (therapist_email, PASSWORD, "therapist", "Therapist"),
        ]:
            registered = await retry(
                "register",
                lambda e=email, p=password, r=role, n=name: http.post(
                    f"{identity.url}/v1/accounts",
                    json={"email": e, "password": p, "display_name": n, "role": r},
                ),
                201,
            )
            tokens = await retry(
                "sign in",
                lambda e=email, p=password: http.post(
                    f"{identity.url}/v1/sessions", json={"email": e, "password": p}
                ),
                200,
            )
            people[role] = (
                registered.json()["user_id"],
                {"Authorization": f"Bearer {tokens.json()['access_token']}"},
            )
        client_id, client = people["client"]
        therapist_id, therapist = people["therapist"]
        await retry(
            "profile",
            lambda: http.patch(
                f"{identity.url}/v1/accounts/me",
                json={"phone": canaries["phone"], "address": canaries["address"]},
                headers=client,
            ),
            200,
        )
        conversation_id = await message_in_a_new_conversation(
            http, messaging.url, client, therapist_id, canaries["message"]
        )
        await retry(
            "note",
            lambda: http.post(
                f"{messaging.url}/v1/clients/{client_id}/notes",
                json={"body": canaries["note"]},
                headers=therapist,
            ),
            201,
        )
        # Read back, so that reads go through logs and spans too.
        listed = await http.get(
            f"{messaging.url}/v1/conversations/{conversation_id}/messages", headers=client
        )
        assert canaries["message"] in listed.text


async def test_no_canary_in_plaintext_anywhere_at_rest_in_transit_or_in_logs(
    processes: ServiceProcesses, infrastructure: Infrastructure
) -> None:
    if not (STACK / "postgres").exists():
        pytest.skip(f"needs the native stack of deploy/stack.sh in {STACK} (make test starts it)")
    canaries = _canaries()
    identity = processes.start("identity", SPANS)
    messaging = processes.start("messaging", SPANS)
    await _journey(identity, messaging, canaries)

    # What the services wrote reaches the data files and the broker's segments.
    with psycopg.connect(libpq_url(infrastructure.postgres_admin_url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    needles = {name: value.encode() for name, value in canaries.items()}
    dump = _dump_all(infrastructure.postgres_admin_url)
    assert len(dump) > 10_000, "pg_dumpall dumped next to nothing"
    found = [f"{name} in pg_dumpall" for name, value in needles.items() if value in dump]
    found += _files_holding(STACK / "postgres", needles)
    found += _files_holding(STACK / "kafka" / "data", needles)
    for service in (identity, messaging):
        log = service.log_path.read_bytes()
        assert b'"trace_id"' in log, f"{service.name} printed no span: nothing was scanned"
        found += [f"{name} in {service.name}'s log" for name, v in needles.items() if v in log]
    assert found == [], found
