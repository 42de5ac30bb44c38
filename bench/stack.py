"""Where the benchmarks run: the native stack's broker and database, a scratch database and
scratch topics per run (both removed at the end), and the facts about the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from confide_toolkit.database import create_scratch_database, libpq_url
from confide_toolkit.database import drop_database as drop_scratch
from confide_toolkit.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    postgres_admin_url: str
    """A superuser URL (`postgresql+psycopg://...`): the benchmarks create their own databases."""


def stack_from_environment() -> Stack:
    """The broker and database of the native stack: from the environment when set (as `make
    bench` does), otherwise from the stack's own `stack.env`."""
    kafka = os.environ.get("CONFIDE_TEST_KAFKA_BOOTSTRAP")
    postgres = os.environ.get("CONFIDE_TEST_POSTGRES_URL")
    if not (kafka and postgres):
        stack_dir = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
        values = _read_env_file(stack_dir / "stack.env")
        kafka = kafka or values.get("CONFIDE_TEST_KAFKA_BOOTSTRAP")
        postgres = postgres or values.get("CONFIDE_TEST_POSTGRES_URL")
    if not (kafka and postgres):
        raise SystemExit(
            "The benchmarks need the native stack: run `make up` (or `deploy/stack.sh infra-up`), "
            "or export CONFIDE_TEST_KAFKA_BOOTSTRAP and CONFIDE_TEST_POSTGRES_URL."
        )
    return Stack(kafka, postgres)


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^(?:export\s+)?([A-Z0-9_]+)=(.*)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip("'\"")
    return values


def create_database(stack: Stack, label: str) -> tuple[str, str]:
    """A new empty database; returns (name, URL)."""
    return create_scratch_database(stack.postgres_admin_url, f"bench_{label}")


def drop_database(stack: Stack, name: str) -> None:
    drop_scratch(stack.postgres_admin_url, name)


@contextlib.contextmanager
def scratch_database(stack: Stack, label: str) -> Iterator[str]:
    """A database for one scenario of one run, dropped afterwards whatever happens."""
    name, url = create_database(stack, label)
    try:
        yield url
    finally:
        drop_database(stack, name)


@contextlib.asynccontextmanager
async def scratch_topics(
    stack: Stack, labels: Sequence[str], partitions: int = 3
) -> AsyncIterator[list[str]]:
    """Uniquely named topics for one run (created as the suite creates its own), deleted at the
    end together with their dead-letter twins if a consumer created any."""
    run = uuid.uuid4().hex[:8]
    names = [f"bench.{label}.{run}" for label in labels]
    await ensure_topics(stack.kafka_bootstrap, names, partitions)
    try:
        yield names
    finally:
        await delete_topics(stack, names)


async def delete_topics(stack: Stack, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in names if t in existing]
        doomed += [f"{t}.dlq" for t in names if f"{t}.dlq" in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


# -- machine facts ------------------------------------------------------------------------


def machine_facts(stack: Stack) -> dict[str, str]:
    """What the figures were measured on; written beside them."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _cpu_model(),
        "nproc": str(os.cpu_count()),
        "memory": _memory_total(),
        "OS": _os_name(),
        "Python": platform.python_version(),
        "Kafka": _kafka_version(),
        "PostgreSQL": _postgres_version(stack),
        "libraries": ", ".join(
            f"{name} {_version(name)}"
            for name in ("aiokafka", "faststream", "sqlalchemy", "psycopg", "fastapi", "uvicorn")
        ),
        "commit": _git_commit(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_total() -> str:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    return platform.platform()


def _kafka_version() -> str:
    stack_dir = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
    jars = sorted((stack_dir / "kafka" / "libs").glob("kafka-server-[0-9]*.jar"))
    if jars:
        return jars[-1].stem.removeprefix("kafka-server-") + " (KRaft, single node)"
    return "unknown"


def _postgres_version(stack: Stack) -> str:
    try:
        with psycopg.connect(libpq_url(stack.postgres_admin_url)) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"
    except psycopg.Error:
        return "unknown"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def remove_leftovers(stack: Stack) -> tuple[list[str], list[str]]:
    """Drop the databases and delete the topics that an interrupted run left behind (every
    `bench_*` database and `bench.*` topic: nothing else uses these prefixes)."""
    with psycopg.connect(libpq_url(stack.postgres_admin_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'"
        ).fetchall()
    databases = [str(row[0]) for row in rows]
    for name in databases:
        drop_database(stack, name)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith("bench.")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    return databases, topics
