"""Scenario 6, billing: a charge with its idempotency check, beside the bare endpoint.

Processes, as in scenario 2 (`bench.http_load`, whose helpers this module drives): identity
(`python -m confide_identity`), billing (`python -m confide_billing`, its sandbox gateway in
process) and the bare endpoint (one `INSERT` per request), each its own process and its own
scratch database, with production defaults.

Before the phases: one client account per worker registered and signed in through identity, a
card added by each (the sandbox's approving Visa, 4242 4242 4242 4242; retried while billing
answers 401 or 409 `account-not-open`: it has not yet consumed identity's signing key or the
registration), one warm-up charge each, then waiting until billing's CPU is quiet (its consumer
read identity's topic from its beginning).

Phases, `clients` workers back to back as in scenario 2 (the load generator of
`bench.http_load`): the bare endpoint; charges, each with a fresh `Idempotency-Key` (the key
looked up, the attempt recorded, the gateway called, the charge, its invoice line and its event
recorded); retried charges, each key sent twice in a row by the same worker (the second request
finds the first's attempt and answers its charge without calling the gateway). The retried
phase is checked: each second answer must name the first's charge, and billing's database must
hold exactly one new charge per key."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.figures import Figure, ScenarioResult
from bench.http_load import (
    START_TIMEOUT,
    LoadSpec,
    PhaseResult,
    Server,
    create_bare_table,
    run_phase,
    server_cpu_ms,
    start_bare,
    start_service,
    stop_all,
    wait_caught_up,
    wait_ready,
)
from bench.stack import Stack, scratch_database

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

CHARGES_PATH = "/v1/charges"
APPROVE_VISA = "4242424242424242"
AMOUNT_CENTS = 15_000
CURRENCY = "USD"
DESCRIPTION = "Session, 50 minutes"


@dataclass(frozen=True)
class BillingConfig:
    clients: int = 8
    seconds: float = 15.0
    """Length of each phase (bare, charge, retried charge)."""
    max_requests: int = 200_000
    settle_seconds: float = 2.0
    """Pause between phases (billing's relay publishes what the phase wrote)."""
    profile_dir: str | None = None

    @classmethod
    def quick(cls) -> BillingConfig:
        return cls(seconds=5.0, settle_seconds=1.0)


# -- the requests (run in the load generator's process) -------------------------------------


def _charge(token: str, card: str, key: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    return (
        CHARGES_PATH,
        {
            "payment_method_id": card,
            "amount_cents": AMOUNT_CENTS,
            "currency": CURRENCY,
            "description": DESCRIPTION,
        },
        {"Authorization": f"Bearer {token}", "Idempotency-Key": key},
    )


def fresh_charge(
    spec: LoadSpec, worker: int, n: int
) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """A new key per charge, as a client sends one with every new payment."""
    return _charge(spec.tokens[worker], spec.per_worker[worker], f"{spec.run}-charge-{worker}-{n}")


def retried_charge(
    spec: LoadSpec, worker: int, n: int
) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """Requests 2m and 2m+1 of a worker share a key: the second is a client's retry."""
    key = f"{spec.run}-retry-{worker}-{n // 2}"
    return _charge(spec.tokens[worker], spec.per_worker[worker], key)


# -- counting in billing's database ---------------------------------------------------------


def _count_charges(database_url: str, key_prefix: str) -> tuple[int, int]:
    """Charges recorded in billing's database (all), and attempts whose key begins with
    `key_prefix` (one per key: the key is unique per person)."""
    import psycopg
    from confide_toolkit.database import libpq_url

    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        charges = conn.execute("SELECT count(*) FROM charges").fetchone()
        attempts = conn.execute(
            "SELECT count(*) FROM charge_attempts WHERE idempotency_key LIKE %s",
            (key_prefix + "%",),
        ).fetchone()
    assert charges is not None and attempts is not None
    return int(charges[0]), int(attempts[0])


@dataclass
class RetryCheck:
    """What the retried phase answered and what billing recorded meanwhile."""

    answered: int
    """Successful answers."""
    pairs: int
    """Keys whose two requests were both answered."""
    mismatched: int
    """Pairs whose second answer named another charge than the first."""
    charge_ids: int
    """Distinct charges named in the answers."""
    recorded: int
    """Charges billing's database gained over the phase."""
    keys: int
    """Keys billing recorded an attempt for over the phase."""

    @property
    def once_per_key(self) -> bool:
        return self.mismatched == 0 and self.recorded == self.keys == self.charge_ids


def _check_retries(phase: PhaseResult, recorded: int, keys: int) -> RetryCheck:
    by_key: dict[tuple[int, int], list[str]] = {}
    for worker, n, charge_id in phase.kept:
        by_key.setdefault((worker, n // 2), []).append(charge_id)
    pairs = [ids for ids in by_key.values() if len(ids) == 2]
    return RetryCheck(
        answered=len(phase.kept),
        pairs=len(pairs),
        mismatched=sum(1 for ids in pairs if ids[0] != ids[1]),
        charge_ids=len({charge_id for _, _, charge_id in phase.kept}),
        recorded=recorded,
        keys=keys,
    )


# -- setting up -----------------------------------------------------------------------------


async def _until(
    client: httpx.AsyncClient,
    what: str,
    server: Server,
    send: Any,
    done: int,
    waiting: Any,
) -> httpx.Response:
    """`send()` again every half second while `waiting(answer)`, until it answers `done`."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        answer: httpx.Response = await send()
        if answer.status_code == done:
            return answer
        if not waiting(answer) or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {answer.status_code} {answer.text}\n{server.log_tail()}")
        await asyncio.sleep(0.5)


async def _set_up(
    client: httpx.AsyncClient,
    bare: Server,
    identity: Server,
    billing: Server,
    clients: int,
    run: str,
) -> tuple[list[str], list[str]]:
    """Each worker's client registered, signed in, with a card and one charge; returns their
    tokens and cards."""
    for i in range(20):
        (await client.post(f"{bare.url}/rows", json={"value": f"warm-{i}"})).raise_for_status()

    async def person(i: int) -> str:
        email, password = f"bench-{run}-b{i}@example.org", f"staple horse {run} billing {i}"
        body = {"email": email, "password": password, "display_name": "Bench Payer"}
        answer = await client.post(f"{identity.url}/v1/accounts", json={**body, "role": "client"})
        if answer.status_code != 201:
            raise RuntimeError(f"registration: {answer.status_code} {answer.text}")
        signed_in = await _until(
            client,
            "sign-in",
            identity,
            lambda: client.post(
                f"{identity.url}/v1/sessions", json={"email": email, "password": password}
            ),
            200,
            # 503 until identity's first signing key is back from Kafka.
            lambda a: a.status_code == 503,
        )
        return str(signed_in.json()["access_token"])

    # One first, alone: until identity's first key is back every sign-in waits for it holding
    # pooled connections (see `bench.http_load._warm_up`).
    first = await person(0)
    tokens = [first, *await asyncio.gather(*(person(i) for i in range(1, clients)))]

    async def card(token: str) -> str:
        headers = {"Authorization": f"Bearer {token}"}
        card_body = {
            "card_number": APPROVE_VISA,
            "exp_month": 12,
            "exp_year": datetime.now(UTC).year + 3,
            "cvc": "737",
            "cardholder_name": "Bench Payer",
            "billing_address": {
                "line1": "1 Bench Street",
                "city": "Loadtown",
                "postal_code": "LT1 1BB",
                "country": "GB",
            },
        }
        added = await _until(
            client,
            "adding a card",
            billing,
            lambda: client.post(
                f"{billing.url}/v1/payment-methods", json=card_body, headers=headers
            ),
            201,
            # 401 until billing has consumed identity's signing key, 409 account-not-open
            # until it has consumed the registration.
            lambda a: (
                a.status_code == 401 or (a.status_code == 409 and "account-not-open" in a.text)
            ),
        )
        return str(added.json()["payment_method_id"])

    cards = [await card(tokens[0])]
    cards += await asyncio.gather(*(card(t) for t in tokens[1:]))
    for i, (token, card_id) in enumerate(zip(tokens, cards, strict=True)):
        path, body, headers = _charge(token, card_id, f"{run}-warm-{i}")
        answer = await client.post(billing.url + path, json=body, headers=headers)
        if answer.status_code != 201:
            raise RuntimeError(f"warm-up charge: {answer.status_code} {answer.text}")
    return tokens, cards


# -- the scenario ---------------------------------------------------------------------------


@dataclass
class BillingRun:
    config: BillingConfig
    phases: dict[str, PhaseResult]
    retries: RetryCheck
    fresh_recorded: int
    """Charges billing's database gained over the fresh-key phase."""
    set_up_seconds: float
    caught_up: bool


async def measure_billing(stack: Stack, config: BillingConfig) -> BillingRun:
    """Run scenario 6; everything it starts is stopped and its databases dropped, whatever
    happens."""
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)
    run = uuid.uuid4().hex[:8]
    servers: list[Server] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-billing-") as scratch,
        scratch_database(stack, "bare") as bare_db,
        scratch_database(stack, "identity") as identity_db,
        scratch_database(stack, "billing") as billing_db,
    ):
        logs = Path(scratch)
        try:
            create_bare_table(bare_db)
            began = time.monotonic()
            bare = start_bare(bare_db, logs, config.profile_dir)
            identity = start_service(
                "identity", identity_db, stack.kafka_bootstrap, run, logs, config.profile_dir
            )
            billing = start_service(
                "billing", billing_db, stack.kafka_bootstrap, run, logs, config.profile_dir
            )
            servers += [bare, identity, billing]
            async with httpx.AsyncClient(timeout=60.0) as client:
                for server in servers:
                    await wait_ready(client, server)
                logger.info("billing: servers ready in %.0f s", time.monotonic() - began)
                tokens, cards = await _set_up(client, bare, identity, billing, config.clients, run)
            caught_up = await wait_caught_up(billing)
            set_up = time.monotonic() - began
            logger.info("billing: set up and caught up in %.0f s", set_up)

            def spec(phase: str, url: str, path: str, **extra: Any) -> LoadSpec:
                return LoadSpec(
                    phase,
                    url,
                    path,
                    config.clients,
                    config.seconds,
                    config.max_requests,
                    run,
                    **extra,
                )

            charging = {"tokens": tuple(tokens), "per_worker": tuple(cards), "keep": "charge_id"}
            phases: dict[str, PhaseResult] = {}
            counts: dict[str, tuple[int, int]] = {}
            for i, phase in enumerate(
                (
                    spec("bare", bare.url, "/rows"),
                    spec("charge", billing.url, CHARGES_PATH, request=fresh_charge, **charging),
                    spec("retry", billing.url, CHARGES_PATH, request=retried_charge, **charging),
                )
            ):
                if i:
                    await asyncio.sleep(config.settle_seconds)
                before = _count_charges(billing_db, f"{run}-{phase.phase}-")
                phases[phase.phase] = await run_phase(phase, servers, phase.seconds + 120)
                after = _count_charges(billing_db, f"{run}-{phase.phase}-")
                counts[phase.phase] = (after[0] - before[0], after[1] - before[1])
                for server in servers:
                    if server.process.poll() is not None:
                        raise RuntimeError(
                            f"{server.name} exited during the {phase.phase} phase:\n"
                            f"{server.log_tail()}"
                        )
        finally:
            stop_all(servers)
    retries = _check_retries(phases["retry"], *counts["retry"])
    logger.info("billing: retried charges %s", retries)
    return BillingRun(config, phases, retries, counts["charge"][0], set_up, caught_up)


def billing_result(run: BillingRun) -> ScenarioResult:
    """Scenario 6's figures, from a run of `measure_billing`."""
    config, phases, retries = run.config, run.phases, run.retries
    bare, charge, retry = phases["bare"], phases["charge"], phases["retry"]
    clients = f"{config.clients} clients"
    bare_cpu = server_cpu_ms(bare, "bare")

    def errors_note(phase: PhaseResult) -> str:
        if not phase.error_count:
            return ""
        detail = ", ".join(f"{count} x {kind}" for kind, count in sorted(phase.errors.items()))
        return f"{phase.error_count} errors of {phase.requests} requests ({detail})"

    def beside_bare(phase: PhaseResult, label: str) -> list[Figure]:
        return [
            Figure(
                "6 billing",
                f"{label}, {clients}",
                phase.rate,
                "requests/s",
                bare.rate,
                "bare endpoint",
                "for information",
                note=errors_note(phase),
            ),
            Figure("6 billing", f"{label}, p50", phase.p(50), "ms", bare.p(50), "bare endpoint"),
            Figure("6 billing", f"{label}, p99", phase.p(99), "ms", bare.p(99), "bare endpoint"),
            Figure(
                "6 billing",
                f"{label}, CPU per request (service + PostgreSQL)",
                server_cpu_ms(phase, "billing"),
                "ms",
                bare_cpu,
                "bare endpoint",
            ),
        ]

    figures = [
        *beside_bare(charge, "charge (a fresh Idempotency-Key each)"),
        *beside_bare(retry, "retried charge (each key sent twice)"),
        Figure(
            "6 billing",
            "retried charges: charges recorded per key",
            retries.recorded / retries.keys if retries.keys else None,
            "",
            target="1, every retry answers the first's charge",
            met=retries.once_per_key,
            note=""
            if retries.once_per_key
            else f"{retries.mismatched} retries named another charge; {retries.recorded} "
            f"charges recorded for {retries.keys} keys ({retries.charge_ids} in the answers)",
        ),
        Figure(
            "6 billing",
            "errors, all phases (non-2xx or failed)",
            float(sum(p.error_count for p in phases.values())),
            "",
            target="0",
            met=all(p.error_count == 0 for p in phases.values()),
        ),
    ]
    setup = [
        f"Servers, each its own process and scratch database on the same PostgreSQL, production "
        "defaults: identity and billing (`python -m confide_<name>`, the sandbox gateway in "
        "billing's process), and scenario 2's bare endpoint (one `INSERT` per request). "
        f"Load generator: scenario 2's, {config.clients} workers, each its own keep-alive "
        f"connection, back to back for {config.seconds:.0f} s per phase, "
        f"{config.settle_seconds:g} s between phases.",
        f"Set-up ({run.set_up_seconds:.0f} s from start): one client per worker registered and "
        "signed in through identity, a card added (the sandbox's approving Visa "
        "4242 4242 4242 4242) once billing had consumed identity's signing key and the "
        "registration, one charge each, then billing's CPU quiet for two seconds"
        + ("" if run.caught_up else " (NOT reached: its consumer still worked during the phases)")
        + ".",
        f"Charge: each worker on its own person and card, {AMOUNT_CENTS / 100:.2f} {CURRENCY}, "
        "a new `Idempotency-Key` per request: the key looked up, the attempt recorded before "
        "the gateway is called, the sandbox gateway, then the charge, the month's invoice "
        "(numbered per year) and `ChargeSucceeded` in the outbox; "
        f"{charge.requests:,} requests, {run.fresh_recorded:,} charges recorded.",
        "Retried charge: requests 2m and 2m+1 of a worker carry the same key (a client retrying "
        "once it has the answer); the second finds the first's attempt and answers its charge "
        f"without calling the gateway. {retry.requests:,} requests, {retries.answered:,} "
        f"answered, {retries.pairs:,} keys answered twice ({retries.mismatched} second answers "
        f"naming another charge); billing's database gained {retries.recorded:,} charges for "
        f"{retries.keys:,} keys, and the answers named {retries.charge_ids:,} distinct charges.",
        "CPU per successful request over each phase, ms, server process + the whole PostgreSQL "
        f"server (whole machine busy, cores of {os.cpu_count()}): "
        + "; ".join(
            f"{name} {_cpu(phase, server)} + {_cpu(phase, 'postgres')} "
            f"({phase.machine_busy_cores:.2f})"
            for name, phase, server in (
                ("bare", bare, "bare"),
                ("charge", charge, "billing"),
                ("retried charge", retry, "billing"),
            )
        )
        + ".",
    ]
    return ScenarioResult(
        name="billing",
        figures=figures,
        series={
            "config": config.__dict__,
            **{f"{name}_ms": phase.latencies_ms for name, phase in phases.items()},
            "errors": {name: phase.errors for name, phase in phases.items()},
            "cpu_seconds": {name: phase.server_cpu for name, phase in phases.items()},
            "retries": retries.__dict__,
        },
        setup=setup,
    )


def _cpu(phase: PhaseResult, key: str) -> str:
    value = phase.cpu_ms_per_request(key)
    return "?" if value is None else f"{value:.2f}"
