"""Services as real processes (`python -m confide_<name>`), each on its own fresh database and
port, all on the real Kafka broker: for journeys across services and for the fault scenarios,
which kill a service (SIGKILL, SIGSTOP) and start it again on the same database and port, as an
orchestrator restarts a crashed replica."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confide_toolkit.database import create_scratch_database, drop_database

READY_WITHIN_SECONDS = 180


class ServiceDidNotStart(Exception):
    """The process exited, or /readyz did not say ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """One service's process. Its database, port, key file and consumer group stay the same
    across `restart`, so a restarted process is the same replica come back."""

    name: str
    url: str
    database: str
    database_url: str
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> ServiceProcess:
        """Start the process and wait until /readyz says ready."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own module, our own env)
                [sys.executable, "-m", f"confide_{self.name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self, within: float = READY_WITHIN_SECONDS) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServiceDidNotStart(f"{self.name} exited with {code}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ServiceDidNotStart(f"{self.name} not ready within {within} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGKILL, SIGSTOP, SIGCONT) to the running process."""
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, with no shutdown of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> ServiceProcess:
        self.kill()
        return self.start()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as an orchestrator stops a replica; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@dataclass
class ServiceProcesses:
    """Starts services as processes; `close` stops them all and drops their databases."""

    postgres_admin_url: str
    kafka_bootstrap: str
    folder: Path
    started: list[ServiceProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        extra_env: dict[str, str] | None = None,
        *,
        like: ServiceProcess | None = None,
    ) -> ServiceProcess:
        """A new replica of `name` on a fresh database; with `like`, another replica of that
        one: the same database, key-encryption key and consumer group, its own port."""
        port = free_port()
        if like is None:
            database, database_url = create_scratch_database(self.postgres_admin_url, f"it_{name}")
            shared = {
                "CONFIDE_DATABASE_URL": database_url,
                "CONFIDE_KEK_FILE": str(self.folder / f"{name}-{database}.kek.json"),
                "CONFIDE_CONSUMER_GROUP": f"{name}-it-{uuid.uuid4().hex[:8]}",
            }
        else:
            database, database_url = "", like.database_url
            shared = {
                key: like.env[key]
                for key in ("CONFIDE_DATABASE_URL", "CONFIDE_KEK_FILE", "CONFIDE_CONSUMER_GROUP")
            }
        env = {
            **os.environ,
            "CONFIDE_SERVICE_NAME": name,
            "CONFIDE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CONFIDE_HTTP_PORT": str(port),
            **shared,
            **(extra_env or {}),
        }
        service = ServiceProcess(
            name=name,
            url=f"http://127.0.0.1:{port}",
            database=database,
            database_url=database_url,
            log_path=self.folder / f"{name}-{port}.log",
            env=env,
        )
        self.started.append(service)
        return service.start()

    def close(self) -> None:
        for service in self.started:
            service.stop()
        for service in self.started:
            if service.database:
                drop_database(self.postgres_admin_url, service.database)
