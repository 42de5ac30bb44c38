"""A figure of the results table: one measured value beside its baseline from the same run,
their ratio, the issue's target and whether it was met."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Figure:
    scenario: str
    figure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None
    """None when the figure has no target of its own (context for another figure)."""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline


@dataclass
class ScenarioResult:
    """What a scenario hands to the report: its figures, the series its plots are drawn from,
    and how it was run (stated beside the table)."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    series: dict[str, object] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    """File names of the PNGs drawn for it, under docs/bench/."""


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.2g}x" if ratio < 0.1 else f"{ratio:.2f}x"


def format_met(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


def table_rows(figures: Sequence[Figure]) -> list[list[str]]:
    return [
        [
            f.scenario,
            f.figure,
            format_value(f.value, f.unit),
            format_value(f.baseline, f.unit)
            + (f" ({f.baseline_label})" if f.baseline_label else "")
            if f.baseline is not None
            else "—",
            format_ratio(f.ratio),
            f.target,
            format_met(f.met),
        ]
        for f in figures
    ]


HEADER = ["scenario", "figure", "value", "baseline", "ratio", "target", "met?"]


def text_table(figures: Sequence[Figure]) -> str:
    rows = [HEADER, *table_rows(figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    line: Callable[[list[str]], str] = lambda row: "  ".join(  # noqa: E731
        cell.ljust(width) for cell, width in zip(row, widths, strict=True)
    )
    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])])


def markdown_table(figures: Sequence[Figure]) -> str:
    rows = table_rows(figures)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
