"""Rows, targets and the Markdown table of BENCHMARKS.md.

Pure Python with no third-party imports, so that the smoke test (and anyone)
can render a table from made-up figures in milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

COLUMNS = ("Benchmark", "Ours", "Baseline (same run)", "Speed-up", "Target", "Result", "Notes")

PASS, FAIL, INFO, ERROR, NOT_AVAILABLE = "PASS", "FAIL", "info", "ERROR", "n/a"


@dataclass(frozen=True)
class Target:
    """What our figure should reach. Every criterion given must hold."""
    at_most: float | None = None      # ours <= this, in the row's unit
    at_least: float | None = None     # ours >= this, in the row's unit
    min_speedup: float | None = None  # speed-up >= this
    beats_baseline: bool = False      # speed-up > 1

    def describe(self, unit: str) -> str:
        parts = []
        if self.at_most is not None:
            parts.append(f"<= {format_value(self.at_most, unit)}")
        if self.at_least is not None:
            parts.append(f">= {format_value(self.at_least, unit)}")
        if self.min_speedup is not None:
            parts.append(f">= {self.min_speedup:g}x baseline")
        if self.beats_baseline:
            parts.append("better than baseline")
        return " and ".join(parts) or "-"

    def check(self, ours: float | None, speedup: float | None) -> str:
        needs_speedup = self.min_speedup is not None or self.beats_baseline
        if ours is None or (needs_speedup and speedup is None):
            return NOT_AVAILABLE
        ok = True
        if self.at_most is not None:
            ok &= ours <= self.at_most
        if self.at_least is not None:
            ok &= ours >= self.at_least
        if self.min_speedup is not None:
            ok &= speedup >= self.min_speedup
        if self.beats_baseline:
            ok &= speedup > 1.0
        return PASS if ok else FAIL


@dataclass
class Row:
    benchmark: str
    unit: str                      # "s", "ms" or "req/s"
    ours: float | None = None
    baseline: float | None = None
    higher_is_better: bool = False  # True for throughput
    target: Target | None = None
    notes: str = ""
    error: str | None = None       # set when a measurement failed

    @property
    def speedup(self) -> float | None:
        """How many times better ours is than the baseline (> 1: ours is better)."""
        if self.ours is None or self.baseline is None:
            return None
        numerator, denominator = ((self.ours, self.baseline) if self.higher_is_better
                                  else (self.baseline, self.ours))
        if denominator <= 0 or not math.isfinite(numerator / denominator):
            return None
        return numerator / denominator

    @property
    def result(self) -> str:
        if self.error:
            return ERROR
        if self.target is None:
            return INFO
        return self.target.check(self.ours, self.speedup)

    def cells(self) -> list[str]:
        notes = self.notes
        if self.error:
            notes = f"{self.error}; {notes}" if notes else self.error
        return [
            self.benchmark,
            format_value(self.ours, self.unit),
            format_value(self.baseline, self.unit),
            format_speedup(self.speedup),
            self.target.describe(self.unit) if self.target else "-",
            self.result,
            notes or "-",
        ]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("req/s", "rows/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:g} {unit}"


def format_speedup(speedup: float | None) -> str:
    if speedup is None:
        return "-"
    return f"{speedup:.2f}x" if speedup < 10 else f"{speedup:.1f}x"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_table(rows: list[Row]) -> str:
    """The Markdown table: a header line, a rule, then one line per row."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(cell) for cell in row.cells()) + " |")
    return "\n".join(lines) + "\n"


def render_report(rows: list[Row], environment: dict[str, str], method: str = "") -> str:
    """BENCHMARKS.md: where and when, the table, then how each row is measured."""
    parts = ["# Benchmarks", "",
             "Written by `make bench` (`bench/`); figures are medians of repeated runs on a "
             "shared, noisy machine, so compare rows within one run rather than across runs. "
             "Speed-up is baseline / ours for times and ours / baseline for throughput: "
             "above 1 means ours is better. Targets are reported, never enforced.", "",
             "## Environment", ""]
    parts += [f"- {name}: {value}" for name, value in environment.items()]
    parts += ["", "## Results", "", render_table(rows).rstrip("\n")]
    if method.strip():
        parts += ["", "## How each row is measured", "", method.strip()]
    return "\n".join(parts) + "\n"
