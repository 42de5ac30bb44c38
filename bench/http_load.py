"""Scenario 2, the HTTP path — HOOK, waiting for the identity and consent services.

What it will measure (issue #11): registration and login (Argon2id dominates them; report the
hash time separately) at 32 concurrent clients for 30 seconds, and a cheap authenticated write
(granting a consent: token verification, event store, outbox) — requests per second, p50, p99 and
errors — beside a bare FastAPI endpoint doing one insert into the same database, under the same
load generator. Target: the consent write's p99 within 3x the bare endpoint's; no errors.

How to complete it, once `services/identity` and `services/consent` serve their APIs:
1. Start each service as `deploy/stack.sh` does (uvicorn, its own scratch database created with
   `bench.stack.scratch_database`, a scratch topic set through `CONFIDE_*` settings), and the bare
   endpoint (`bare_app` below) on the same database server, each in its own process.
2. Drive each with `load(...)` below: 32 clients, 30 s (6 s in --quick), one shared `httpx`
   client per process of the load generator; count every non-2xx as an error.
3. Measure Argon2id alone with the identity service's own hasher (`confide_identity.passwords`)
   in a thread pool of the same size the service uses, and report it as its own row.
4. Hand the service PIDs to `bench.memory` for scenario 5 (idle, then during step 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.figures import Figure, ScenarioResult
from bench.stack import Stack


@dataclass(frozen=True)
class HttpConfig:
    clients: int = 32
    seconds: float = 30.0

    @classmethod
    def quick(cls) -> HttpConfig:
        return cls(seconds=6.0)


async def run_http(stack: Stack, config: HttpConfig) -> ScenarioResult:
    """HOOK: the rows are reserved in the table until the services exist."""
    del stack
    pending = "pending: needs the identity and consent services"
    return ScenarioResult(
        name="http",
        figures=[
            Figure(
                "2 HTTP", "register p99, 32 clients", None, "ms", target="no errors", note=pending
            ),
            Figure("2 HTTP", "login p99, 32 clients", None, "ms", target="no errors", note=pending),
            Figure(
                "2 HTTP",
                "grant consent p99, 32 clients",
                None,
                "ms",
                target="≤ 3x bare endpoint",
                note=pending,
            ),
        ],
        setup=[
            f"Not run yet ({pending}): {config.clients} concurrent clients for "
            f"{config.seconds:.0f} s per endpoint once they exist; see `bench/http_load.py`."
        ],
    )
