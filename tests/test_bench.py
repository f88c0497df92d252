"""Smoke test of the benchmark harness (bench/): renders BENCHMARKS.md's table
from made-up figures. Measures nothing and asserts no timing."""
from __future__ import annotations

import re

from bench.report import COLUMNS, Row, Target, render_report, render_table

FAKE_ROWS = [
    Row("Cold start", "s", ours=0.41, baseline=1.9, target=Target(at_most=0.6, min_speedup=4),
        notes="median of 5"),
    Row("Warm 1-row predict, p50", "ms", ours=0.35, baseline=0.3,
        target=Target(at_most=0.3, beats_baseline=True)),
    Row("Warm 1-row predict, p99", "ms", ours=0.9, baseline=1.2, notes="a | pipe\nand a newline"),
    Row("HTTP keep-alive, 1 client", "req/s", ours=1500.0, baseline=25.0, higher_is_better=True,
        target=Target(at_least=1000)),
    Row("Bulk CSV predict", "s", error="could not measure: boom"),
]


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") or line.startswith("|---"), line
    assert line.endswith("|"), line
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_table_has_a_header_a_rule_and_one_line_per_row_of_equal_width():
    lines = render_table(FAKE_ROWS).splitlines()
    assert len(lines) == 2 + len(FAKE_ROWS)
    assert _cells(lines[0]) == list(COLUMNS)
    assert set(_cells(lines[1])) == {"---"} and len(_cells(lines[1])) == len(COLUMNS)
    for line, row in zip(lines[2:], FAKE_ROWS):
        cells = _cells(line)
        assert len(cells) == len(COLUMNS), line
        assert cells[0] == row.benchmark


def test_results_speedups_and_units():
    cells = {row.benchmark: _cells(line) for row, line in
             zip(FAKE_ROWS, render_table(FAKE_ROWS).splitlines()[2:])}
    result, speedup, ours = (COLUMNS.index(name) for name in ("Result", "Speed-up", "Ours"))
    assert cells["Cold start"][result] == "PASS"  # 0.41 s <= 0.6 s and 1.9 / 0.41 >= 4
    assert cells["Cold start"][speedup] == "4.63x"
    assert cells["Warm 1-row predict, p50"][result] == "FAIL"  # 0.35 ms > 0.3 ms, slower
    assert cells["Warm 1-row predict, p50"][speedup] == "0.86x"
    assert cells["Warm 1-row predict, p99"][result] == "info"
    assert cells["HTTP keep-alive, 1 client"][result] == "PASS"
    assert cells["HTTP keep-alive, 1 client"][speedup] == "60.0x"
    assert cells["HTTP keep-alive, 1 client"][ours] == "1,500 req/s"
    assert cells["Bulk CSV predict"][result] == "ERROR"
    assert "boom" in cells["Bulk CSV predict"][-1]


def test_notes_cannot_break_the_table():
    line = render_table(FAKE_ROWS[2:3]).splitlines()[2]
    assert "\n" not in line and r"a \| pipe and a newline" in line


def test_report_lists_the_environment_and_the_table():
    report = render_report(FAKE_ROWS, {"python": "3.13.0", "nproc": "2"}, "How: fake.")
    assert "- python: 3.13.0" in report and "- nproc: 2" in report
    assert render_table(FAKE_ROWS).rstrip("\n") in report
    assert report.endswith("How: fake.\n")
