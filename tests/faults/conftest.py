"""The fault tests run on the suite as `deploy/stack.sh up` starts it: every service as its own
process, on the real broker and database. The stack's directory and ports come from the
environment (`CONFIDE_STACK_DIR`, `CONFIDE_SERVICE_PORT_OFFSET`, ... as `make test` sets
them); `stack.sh up` is idempotent: it starts only what is not running and waits for /readyz."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from confide_testing import Infrastructure
from confide_testing.processes import ServiceProcesses

ROOT = Path(__file__).resolve().parents[2]


def existing_services() -> list[str]:
    """Every service of the repository: a package with a `__main__` that stack.sh starts."""
    return sorted(
        main.parent.name.removeprefix("confide_")
        for main in ROOT.glob("services/*/src/confide_*/__main__.py")
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test taking `each_service` runs once per existing service: one added later joins
    # without an edit.
    if "each_service" in metafunc.fixturenames:
        metafunc.parametrize("each_service", existing_services())


def _stack_env(stack_dir: Path) -> dict[str, str]:
    # stack.sh writes where everything listens as `export NAME=value` lines.
    values: dict[str, str] = {}
    env_file = stack_dir / "stack.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, _, value = line.removeprefix("export ").partition("=")
                values[name] = value
    return values


@pytest.fixture(scope="session")
def service_urls() -> dict[str, str]:
    """Each existing service's base URL, once `deploy/stack.sh up` has them all ready."""
    started = subprocess.run(
        [str(ROOT / "deploy" / "stack.sh"), "up"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if started.returncode != 0:
        pytest.fail(f"deploy/stack.sh up failed:\n{started.stdout}\n{started.stderr}")
    stack_dir = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
    written = _stack_env(stack_dir)
    urls: dict[str, str] = {}
    for name in existing_services():
        variable = f"CONFIDE_{name.upper()}_URL"
        url = written.get(variable) or os.environ.get(variable)
        if url is None:
            pytest.fail(f"stack.sh up did not say where {name} listens ({variable})")
        urls[name] = url.rstrip("/")
    return urls


@pytest.fixture(scope="session")
def database_urls(service_urls: dict[str, str]) -> dict[str, str]:
    """Each running service's own database, as the stack gave it to the service."""
    stack_dir = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
    written = _stack_env(stack_dir)
    urls: dict[str, str] = {}
    for name in service_urls:
        variable = f"CONFIDE_{name.upper()}_DATABASE_URL"
        url = written.get(variable) or os.environ.get(variable)
        if url is None:
            pytest.fail(f"stack.sh up did not say where {name}'s database is ({variable})")
        urls[name] = url
    return urls


@pytest.fixture(scope="session")
def kafka_bootstrap_of_stack(service_urls: dict[str, str]) -> str:
    """The broker the stack's services consume, where tokens' keys and revocations go."""
    stack_dir = Path(os.environ.get("CONFIDE_STACK_DIR", ROOT / ".stack"))
    bootstrap = _stack_env(stack_dir).get("CONFIDE_KAFKA_BOOTSTRAP") or os.environ.get(
        "CONFIDE_KAFKA_BOOTSTRAP"
    )
    if not bootstrap:
        pytest.fail("no CONFIDE_KAFKA_BOOTSTRAP: source the stack's stack.env first")
    return bootstrap


@pytest.fixture
def processes(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[ServiceProcesses]:
    """Services as processes of the scenario's own (fresh databases), killed and restarted at
    will without touching the stack's."""
    started = ServiceProcesses(infrastructure.postgres_admin_url, kafka_bootstrap, tmp_path)
    yield started
    started.close()
