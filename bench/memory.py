"""Scenario 5, memory: the resident memory (RSS, with psutil) of each service process idle and
under scenario 2's load.

The processes are the ones scenario 2 (`bench.http_load`) starts: identity, consent and, for
scale, the bare FastAPI endpoint. Idle: the median of four samples 0.5 s apart, a few seconds
after the warm-up (start-up, one account per worker registered and signed in, one grant each).
Under load: the peak of samples every 0.5 s over all of scenario 2's load phases. Scenarios 2
and 5 share one run: `python -m bench` measures scenario 2 once, whether `http`, `memory` or both
are asked for, and reports from it what was asked (with `--only memory`, scenario 2's own figures
are not printed)."""

from __future__ import annotations

from bench.figures import Figure, ScenarioResult
from bench.http_load import HttpRun


def memory_result(run: HttpRun) -> ScenarioResult:
    """Scenario 5's figures, from the samples a run of scenario 2 (`measure_http`) took."""
    labels = {"identity": "identity", "consent": "consent", "bare": "bare FastAPI endpoint"}
    figures = []
    for name, label in labels.items():
        peaks = [p.memory_peak_mib[name] for p in run.phases.values() if name in p.memory_peak_mib]
        figures.append(
            Figure(
                "5 memory",
                f"{label} RSS, peak under load",
                max(peaks) if peaks else None,
                "MiB",
                run.idle_mib.get(name),
                "idle",
            )
        )
    identity_idle, consent_idle = run.idle_mib.get("identity"), run.idle_mib.get("consent")
    figures.append(
        Figure(
            "5 memory",
            "identity RSS idle, beside consent's (Argon2id buffers given back)",
            identity_idle,
            "MiB",
            consent_idle,
            "consent idle",
            "≤ 1.3x consent",
            identity_idle is not None
            and consent_idle is not None
            and identity_idle <= 1.3 * consent_idle,
        )
    )
    per_phase = "; ".join(
        f"{phase}: "
        + ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(result.memory_peak_mib.items()))
        for phase, result in run.phases.items()
    )
    setup = [
        "RSS of each server process (psutil, including any child processes), the processes of "
        "scenario 2: idle is the median of four samples 0.5 s apart, a few seconds after the "
        "warm-up; under load is the peak of samples every 0.5 s over every load phase "
        f"({run.config.clients} clients, {run.config.seconds:.0f} s each).",
        f"Peak per phase, MiB: {per_phase}. Right after start-up (before any request), MiB: "
        + ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(run.fresh_mib.items()))
        + ". The warm-up already ran Argon2id hashes in identity, so its idle figure holds their "
        "memory if the allocator kept it.",
        f"Identity runs at most {run.argon2.concurrency} Argon2id hashes at once, each holding "
        f"{run.argon2.memory_kib // 1024} MiB while it runs.",
    ]
    return ScenarioResult(
        name="memory",
        figures=figures,
        series={
            "idle_mib": run.idle_mib,
            "peak_mib": {phase: r.memory_peak_mib for phase, r in run.phases.items()},
        },
        setup=setup,
    )
