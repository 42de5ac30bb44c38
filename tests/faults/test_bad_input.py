"""Bad input (issue 21, item 3), on every service as its own process.

- schemathesis runs over each service's OpenAPI document with all its checks (server errors,
  undocumented statuses and content types, schema-valid requests refused, schema-violating
  ones accepted, the `Allow` of a 405, ...), once per role, bounded and seeded: none may fail;
  and one of ours (refusal_hooks.py): a refused request changes no row of the service's tables.
- the authorisation matrix, generated from the same documents: every operation that needs a
  token, called with no token, an expired one, a forged signature, a wrong audience, a revoked
  session, a session signed out at identity, and (where `x-roles` restricts it) a valid token
  of another role, is refused with 401 or 403, every one of them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from confide_testing import TokenMinter
from confide_toolkit.auth import ACCESS_TOKEN_ALGORITHM, ACCESS_TOKEN_TYPE, ISSUER, ROLES, Role
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SCHEMATHESIS_SEED = 21
SCHEMATHESIS_EXAMPLES = 10
# `make faults` gives each run a minute; within `make test` (CI's budget) a run gets 20 s.
SCHEMATHESIS_SECONDS = int(os.environ.get("CONFIDE_SCHEMATHESIS_SECONDS", "20"))
SCHEMATHESIS_AT_ONCE = 3
PASSWORD = "a long and unguessable passphrase 2026"

# What schemathesis is told beyond its defaults, each for a reason a reader can check:
# - a body over the service's size limit is refused with 413 before it is parsed: a rejection
#   as good as 422 for an oversized schema-violating body;
# - a new password is refused (422 password-refused) when it is breached, repetitive or holds
#   the email: rules no JSON Schema can state (the document states the lengths and says so);
# - withdrawing a consent (DELETE) keeps it: the ledger is the legal record, and GET shows it
#   `revoked` (its receipt and validity too); that is the contract, not a deleted resource
#   still served. Schemathesis 4.32 applies this check (use_after_free) in its stateful phase
#   whatever its configuration file says, so `--exclude-checks` turns it off for every service
#   (the only DELETEs today are consent's withdrawal and identity's sign-out, whose session
#   is not a resource to GET).
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]

[[operations]]
include-path = "/v1/accounts"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2XX", "3XX", 401, 403, 404, 409, 422, 429, "5XX"
]

[[operations]]
include-path = "/v1/accounts/me/password"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2XX", "3XX", 401, 403, 404, 409, 422, 429, "5XX"
]
"""


def schemathesis_cli() -> str:
    beside = Path(sys.executable).parent / "schemathesis"
    found = str(beside) if beside.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (it is one of the dev dependencies)")
    return found


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


# --- tokens ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def minter(kafka_bootstrap_of_stack: str) -> TokenMinter:
    """A signing key every service learns from identity.events, as it learns identity's."""
    minted = TokenMinter(kafka_bootstrap_of_stack)
    await minted.publish_key()
    return minted


@dataclass
class IdentityAccount:
    """A person registered and signed in at identity; `refresh_token` is their latest."""

    subject_id: uuid.UUID
    refresh_token: str


@pytest.fixture(scope="session")
async def identity_accounts(service_urls: dict[str, str]) -> dict[str, IdentityAccount]:
    """One account per use, all signed in before any test runs: schemathesis's wrong
    passwords lock sign-in from this address for a while (identity's throttling, as meant),
    and refreshing a session is not sign-in."""
    accounts: dict[str, IdentityAccount] = {}
    # identity throttles sign-in per client address, read from X-Forwarded-For when a local
    # proxy sends it (uvicorn trusts loopback): this test's sign-ins come from an address of
    # their own, and schemathesis's failures from others (`test_schemathesis_finds_nothing`).
    address = {"X-Forwarded-For": f"203.0.113.{secrets.randbelow(254) + 1}"}
    async with httpx.AsyncClient(
        base_url=service_urls["identity"], timeout=30, headers=address
    ) as http:
        for use, role in (
            ("client", "client"),
            ("therapist", "therapist"),
            ("signed out", "client"),
        ):
            email = f"faults-{uuid.uuid4().hex[:12]}@example.org"
            body = {"email": email, "password": PASSWORD, "display_name": "Fault", "role": role}
            registered = await http.post("/v1/accounts", json=body)
            assert registered.status_code == 201, registered.text
            credentials = {"email": email, "password": PASSWORD}
            signed_in = await http.post("/v1/sessions", json=credentials)
            assert signed_in.status_code == 200, signed_in.text
            accounts[use] = IdentityAccount(
                uuid.UUID(registered.json()["user_id"]), signed_in.json()["refresh_token"]
            )
    return accounts


async def fresh_access_token(identity_url: str, account: IdentityAccount) -> str:
    """A new access token of the account's session (access tokens live minutes)."""
    async with httpx.AsyncClient(base_url=identity_url, timeout=30) as http:
        refreshed = await http.post(
            "/v1/sessions/refresh", json={"refresh_token": account.refresh_token}
        )
    assert refreshed.status_code == 200, refreshed.text
    account.refresh_token = refreshed.json()["refresh_token"]
    return str(refreshed.json()["access_token"])


async def token_for(
    service: str,
    role: Role,
    urls: dict[str, str],
    minter: TokenMinter,
    accounts: dict[str, IdentityAccount],
) -> str:
    # Identity accepts only the sessions it opened itself: its runs use real accounts (nobody
    # can sign up as compliance staff, so that run meets 401s). The other services verify
    # tokens against the keys identity.events announced, the test key among them.
    if service == "identity" and role in accounts:
        return await fresh_access_token(urls["identity"], accounts[role])
    return minter.token(uuid.uuid4(), role, ttl=timedelta(minutes=30))


# --- schemathesis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemathesisRun:
    exit_code: int
    output: str


async def run_schemathesis(
    service: str,
    role: Role,
    service_urls: dict[str, str],
    database_urls: dict[str, str],
    minter: TokenMinter,
    identity_accounts: dict[str, IdentityAccount],
    workdir: Path,
) -> SchemathesisRun:
    token = await token_for(service, role, service_urls, minter, identity_accounts)
    config = workdir / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        schemathesis_cli(),
        "--config-file",
        str(config),
        "run",
        f"{service_urls[service]}/openapi.json",
        "--checks",
        # `all` is schemathesis's own; a check of ours runs only when named.
        "all,refusal_changes_nothing",
        "--exclude-checks",
        "use_after_free",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--max-time",
        str(SCHEMATHESIS_SECONDS),
        "--seed",
        str(SCHEMATHESIS_SEED),
        "-w",
        "1",
        "--report",
        "ndjson",
        "--report-dir",
        str(workdir),
        "-H",
        f"Authorization: Bearer {token}",
        # Its wrong passwords lock sign-in for this address only, not for everyone on loopback.
        "-H",
        f"X-Forwarded-For: 198.51.100.{secrets.randbelow(254) + 1}",
    ]
    # The run's own reports and caches stay out of the working tree.
    finished = await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=workdir,
        env={
            **os.environ,
            "NO_COLOR": "1",
            # refusal_hooks.py: a refused request changes no row of the service's tables.
            "SCHEMATHESIS_HOOKS": "refusal_hooks",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "CONFIDE_REFUSAL_DATABASE_URL": database_urls[service],
            "CONFIDE_REFUSAL_SERVICE": service,
        },
        capture_output=True,
        text=True,
        timeout=SCHEMATHESIS_SECONDS * 4,
        check=False,
    )
    return SchemathesisRun(finished.returncode, finished.stdout + finished.stderr)


@pytest.fixture(scope="session")
async def schemathesis_runs(
    request: pytest.FixtureRequest,
    service_urls: dict[str, str],
    database_urls: dict[str, str],
    minter: TokenMinter,
    identity_accounts: dict[str, IdentityAccount],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[tuple[str, Role], asyncio.Future[SchemathesisRun]]]:
    """Every run this session's tests will judge, started at once and run side by side:
    a run mostly waits (the refusal check lets the service's rows settle before each writing
    request), so one at a time left the machine idle for minutes. Never two runs of the same
    service together: the refusal check would take one run's accepted writes for the other's
    refusal's. At most `SCHEMATHESIS_AT_ONCE` runs at a time."""
    wanted: dict[str, list[Role]] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "originalname", "") == "test_schemathesis_finds_nothing" and callspec:
            wanted.setdefault(callspec.params["each_service"], []).append(callspec.params["role"])
    loop = asyncio.get_running_loop()
    runs = {(s, r): loop.create_future() for s, roles in wanted.items() for r in roles}
    slots = asyncio.Semaphore(SCHEMATHESIS_AT_ONCE)

    async def each_role_of(service: str) -> None:
        for role in wanted[service]:
            run = runs[(service, role)]
            try:
                async with slots:
                    workdir = tmp_path_factory.mktemp(f"schemathesis-{service}-{role}")
                    run.set_result(
                        await run_schemathesis(
                            service,
                            role,
                            service_urls,
                            database_urls,
                            minter,
                            identity_accounts,
                            workdir,
                        )
                    )
            except Exception as error:
                run.set_exception(error)

    chains = [asyncio.create_task(each_role_of(service)) for service in wanted]
    yield runs
    for chain in chains:
        chain.cancel()
    await asyncio.gather(*chains, return_exceptions=True)


@pytest.mark.parametrize("role", ROLES)
async def test_schemathesis_finds_nothing(
    each_service: str,
    role: Role,
    schemathesis_runs: dict[tuple[str, Role], asyncio.Future[SchemathesisRun]],
) -> None:
    run = await asyncio.wait_for(
        schemathesis_runs[(each_service, role)], timeout=SCHEMATHESIS_SECONDS * 4 * 20
    )
    summary = [line for line in run.output.splitlines() if "generated" in line or "Tested" in line]
    print(f"schemathesis {each_service} as {role}: exit {run.exit_code}; {' '.join(summary)}")
    server_errors = [
        line for line in run.output.splitlines() if "[500]" in line or "Server error" in line
    ]
    assert not server_errors, run.output
    assert run.exit_code == 0, run.output


# --- the authorisation matrix ----------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    service: str
    method: str
    path: str
    roles: tuple[str, ...]  # empty: any signed-in person

    @property
    def label(self) -> str:
        return f"{self.service} {self.method.upper()} {self.path}"


def secured_operations(service: str, document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"} and operation.get("security"):
                roles = tuple(operation.get("x-roles", ()))
                found.append(Operation(service, method, path, roles))
    return found


def concrete(operation: Operation, document: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The operation's path with its parameters filled, and its required query parameters:
    well-formed values, so that only the token can be what is refused."""
    raw = document["paths"][operation.path][operation.method]
    path = operation.path
    query: dict[str, str] = {}
    for parameter in raw.get("parameters", []):
        schema = parameter.get("schema", {})
        value = str(uuid.uuid4()) if schema.get("format") == "uuid" else "x"
        if parameter["in"] == "path":
            path = path.replace("{" + parameter["name"] + "}", value)
        elif parameter["in"] == "query" and parameter.get("required"):
            query[parameter["name"]] = value
    return path, query


@dataclass(frozen=True)
class BadToken:
    name: str
    header: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wrong_audience(minter: TokenMinter, subject: uuid.UUID) -> str:
    now = datetime.now(UTC)
    claims = {
        "iss": ISSUER,
        "aud": "some-other-api",
        "sub": str(subject),
        "role": "client",
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "auth_time": int(now.timestamp()),
    }
    return jwt.encode(
        claims,
        minter.private_key,
        algorithm=ACCESS_TOKEN_ALGORITHM,
        headers={"kid": minter.kid, "typ": ACCESS_TOKEN_TYPE},
    )


@pytest.fixture(scope="session")
def documents(service_urls: dict[str, str]) -> Iterator[dict[str, dict[str, Any]]]:
    with httpx.Client(timeout=30) as http:
        yield {name: http.get(f"{url}/openapi.json").json() for name, url in service_urls.items()}


def probe_of(operations: list[Operation], document: dict[str, Any]) -> Operation | None:
    """An operation a client may read without naming anything: where a token is accepted or
    refused as a whole, not for what it asks."""
    for operation in operations:
        raw = document["paths"][operation.path][operation.method]
        if (
            operation.method == "get"
            and "{" not in operation.path
            and (not operation.roles or "client" in operation.roles)
            and not any(p.get("required") for p in raw.get("parameters", []))
        ):
            return operation
    return None


async def test_every_secured_operation_refuses_every_bad_token(
    service_urls: dict[str, str],
    documents: dict[str, dict[str, Any]],
    minter: TokenMinter,
    identity_accounts: dict[str, IdentityAccount],
) -> None:
    operations = [
        operation
        for name, document in documents.items()
        for operation in secured_operations(name, document)
    ]
    assert operations, "no operation needs a token: the documents lost their security"
    subject = uuid.uuid4()
    forger = TokenMinter(
        minter.kafka_bootstrap, kid=minter.kid, private_key=Ed25519PrivateKey.generate()
    )

    # A session that every service accepted, then revoked (the test key's SessionsRevoked),
    # and one signed out at identity: both must be refused from then on, everywhere.
    session = uuid.uuid4()
    revoked = minter.token(subject, "client", ttl=timedelta(minutes=30), session_id=session)
    signed_out = await fresh_access_token(service_urls["identity"], identity_accounts["signed out"])
    probes = {
        name: probe_of([o for o in operations if o.service == name], document)
        for name, document in documents.items()
    }

    async def status_of(http: httpx.AsyncClient, operation: Operation, token: str) -> int:
        path, query = concrete(operation, documents[operation.service])
        url = service_urls[operation.service] + path
        body: dict[str, Any] | None = {} if operation.method in {"post", "put", "patch"} else None
        response = await http.request(
            operation.method.upper(), url, params=query, json=body, headers=bearer(token)
        )
        return response.status_code

    async with httpx.AsyncClient(timeout=30) as http:
        for name, probe in probes.items():
            if probe is None or name == "identity":
                continue  # identity accepts only the sessions it opened itself

            async def accepted(probe: Operation = probe) -> bool:
                return await status_of(http, probe, revoked) not in {401, 403, 503}

            assert await eventually(accepted), f"{name} never accepted the test key's token"
        for name, probe in probes.items():
            if probe is not None:
                assert await status_of(http, probe, signed_out) not in {401, 403}, name

        await minter.revoke_sessions(subject, session)
        signed_out_response = await http.delete(
            f"{service_urls['identity']}/v1/sessions/current", headers=bearer(signed_out)
        )
        assert signed_out_response.status_code == 204
        for name, probe in probes.items():
            if probe is None:
                continue

            async def refused(probe: Operation = probe) -> bool:
                answers = [await status_of(http, probe, t) for t in (revoked, signed_out)]
                return answers == [401, 401]

            assert await eventually(refused), f"{name} still accepts a revoked session"

        bad_tokens = [
            BadToken("no token", {}),
            BadToken(
                "expired",
                bearer(minter.token(subject, "client", ttl=timedelta(minutes=-10))),
            ),
            BadToken("forged signature", bearer(forger.token(subject, "client"))),
            BadToken("wrong audience", bearer(wrong_audience(minter, subject))),
            BadToken("revoked session", bearer(revoked)),
            BadToken("signed out at identity", bearer(signed_out)),
        ]
        outcomes: list[tuple[str, str, int]] = []
        for operation in operations:
            path, query = concrete(operation, documents[operation.service])
            url = service_urls[operation.service] + path
            body: dict[str, Any] | None = (
                {} if operation.method in {"post", "put", "patch"} else None
            )
            cases = list(bad_tokens)
            for role in ROLES:
                if operation.roles and role not in operation.roles:
                    other = minter.token(subject, role, ttl=timedelta(minutes=5))
                    cases.append(BadToken(f"wrong role ({role})", bearer(other)))
            for case in cases:
                response = await http.request(
                    operation.method.upper(), url, params=query, json=body, headers=case.header
                )
                outcomes.append((operation.label, case.name, response.status_code))

    refused_count = sum(1 for _, _, status in outcomes if status in {401, 403})
    wrong_role = sum(1 for _, case, _ in outcomes if case.startswith("wrong role"))
    print(
        f"authorisation matrix: {len(operations)} secured operations over "
        f"{len(documents)} services, {len(outcomes)} requests ({wrong_role} of a wrong role): "
        f"{refused_count} refused ({100 * refused_count // len(outcomes)} %)"
    )
    let_through = [outcome for outcome in outcomes if outcome[2] not in {401, 403}]
    assert not let_through, let_through
    # The role refusals are 403 (who you are is known, what you may do is not this).
    assert all(status == 403 for _, case, status in outcomes if case.startswith("wrong role")), [
        o for o in outcomes if o[1].startswith("wrong role")
    ]
