"""Journeys across services running as real processes (`python -m confide_<name>`), each with
its own fresh database, all on the real Kafka broker: the services trust each other only
through the events on it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confide_testing import Infrastructure
from confide_toolkit.database import create_scratch_database, drop_database


@dataclass
class ServiceProcess:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as an orchestrator stops a replica; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ServiceStarter = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[ServiceStarter]:
    """Starts a service as its own process and waits until /readyz says ready."""
    started: list[tuple[ServiceProcess, str]] = []
    admin = infrastructure.postgres_admin_url

    def start(name: str, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        database, database_url = create_scratch_database(admin, f"it_{name}")
        port = _free_port()
        log_path = tmp_path / f"{name}-{port}.log"
        env = {
            **os.environ,
            "CONFIDE_SERVICE_NAME": name,
            "CONFIDE_DATABASE_URL": database_url,
            "CONFIDE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CONFIDE_HTTP_PORT": str(port),
            "CONFIDE_KEK_FILE": str(tmp_path / f"{name}-{port}.kek.json"),
            "CONFIDE_CONSUMER_GROUP": f"{name}-it-{uuid.uuid4().hex[:8]}",
            **(extra_env or {}),
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"confide_{name}"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        service = ServiceProcess(name, f"http://127.0.0.1:{port}", process, log_path, database_url)
        started.append((service, database))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{service.log()[-3000:]}")
            try:
                if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{name} was not ready within 90 s:\n{service.log()[-3000:]}")

    yield start
    for service, database in started:
        service.stop()
        drop_database(admin, database)
