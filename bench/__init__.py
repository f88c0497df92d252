"""Benchmarks for ml-api (local only, never shipped): `make bench`.

Runs every benchmark against moto's server on free 127.0.0.1 ports, measures
our figure and its baseline in the same run, and writes BENCHMARKS.md at the
repository root (and prints it). Nothing here asserts a timing: the machines
are shared and noisy, so the figures are medians of repeated runs and the
targets are reported as PASS/FAIL, never enforced.

Modules: `report` (rows, targets, the table; no heavy imports), `stack`
(environment, processes, the emulator and the trained model), `coldstart`,
`inprocess` (warm and bulk predicts through chalice.test.Client), `httpload`
and `loadclient` (keep-alive HTTP throughput), `run` (the whole thing).
"""
