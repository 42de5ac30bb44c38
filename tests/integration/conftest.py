"""Journeys across services running as real processes (`python -m confide_<name>`), each with
its own fresh database, all on the real Kafka broker: the services trust each other only
through the events on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confide_testing import Infrastructure
from confide_testing.processes import ServiceDidNotStart, ServiceProcess, ServiceProcesses

ServiceStarter = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(
    infrastructure: Infrastructure, kafka_bootstrap: str, tmp_path: Path
) -> Iterator[ServiceStarter]:
    """Starts a service as its own process and waits until /readyz says ready."""
    processes = ServiceProcesses(infrastructure.postgres_admin_url, kafka_bootstrap, tmp_path)

    def start(name: str, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        try:
            return processes.start(name, extra_env)
        except ServiceDidNotStart as error:
            pytest.fail(str(error))

    yield start
    processes.close()
