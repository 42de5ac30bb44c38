"""Scenario 5, memory — HOOK, waiting for the identity and consent services.

Resident memory (RSS, with psutil) of each running service process idle and under scenario 2's
load. `resident_mib` is the measurement; `run_memory` will take the PIDs of the service processes
that `bench.http_load` starts (idle: after start-up and one request each; loaded: the peak of
samples every 0.5 s during the 30-second load)."""

from __future__ import annotations

from bench.figures import Figure, ScenarioResult
from bench.stack import Stack


def resident_mib(pid: int) -> float:
    """The resident set size of a process and its children (uvicorn workers), in MiB."""
    import psutil

    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        total += child.memory_info().rss
    return total / 1024 / 1024


async def run_memory(stack: Stack) -> ScenarioResult:
    """HOOK: the rows are reserved in the table until the services exist."""
    del stack
    pending = "pending: needs the identity and consent services (with scenario 2)"
    return ScenarioResult(
        name="memory",
        figures=[
            Figure("5 memory", f"{service} RSS idle / under load", None, "MiB", note=pending)
            for service in ("identity", "consent")
        ],
        setup=[f"Not run yet ({pending}); see `bench/memory.py`."],
    )
