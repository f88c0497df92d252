"""Batch predictions through the local stack, against the CLI's sync predicts.

`python -m devstack.run` (the API server, the trainer's runner and run_batch's
runner, each function in a worker limited like its Lambda) on the benchmark's
emulator. A file of `rows` x 4 iris-like features (4 decimals; 10 million rows
are about 300 MB) is predicted twice with the iris model, by the CLI in a
child process each time, alternately timed end to end:

- ours: `ml-api predict MODEL FILE --batch -o out.csv` (the upload form,
  POST /models/{id}/batches, polling GET /batches/{id}, the results' download);
- baseline: `ml-api predict MODEL FILE -o out.csv`, which splits the file into
  requests under Lambda's 6 MB and writes the answers.

The two outputs are compared row for row (labels equal, probabilities equal as
floats). The function's peak memory is the largest `max_memory_mb` of the
batch runner's REPORT lines (`runner.report`, the worker's VmHWM).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import Row, Target
from bench.stack import REPO, Processes, child_environment, free_ports, progress, wait_for_port

BATCH_MEMORY_MB = 512
CLI_TIMEOUT = 3600


def write_rows(path: Path, rows: int, seed: int = 16) -> int:
    """rows x 4 features, 4 decimals, in blocks; returns the file's size."""
    if path.exists() and path.stat().st_size and path.with_suffix(".rows").exists() \
            and path.with_suffix(".rows").read_text() == str(rows):
        return path.stat().st_size
    rng = np.random.default_rng(seed)
    with open(path, "w") as out:
        for start in range(0, rows, 500_000):
            block = rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (min(500_000, rows - start), 4))
            np.savetxt(out, block, fmt="%.4f", delimiter=",")
    path.with_suffix(".rows").write_text(str(rows))
    return path.stat().st_size


def _cli(api: str, env: dict, *args: str) -> float:
    import subprocess

    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mlapi_cli.main", "--url", api, *args],
                            cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ml-api {' '.join(args)} exited {result.returncode}: "
                           f"{result.stderr[-2000:]}")
    return elapsed


def _same_predictions(batch: Path, sync: Path) -> int:
    """Rows compared; raises on the first difference."""
    count = 0
    with open(batch) as ours, open(sync) as theirs:
        next(ours), next(theirs)
        for count, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
            _, label, *probabilities = a.rstrip("\n").split(",")
            their_label, *their_probabilities = b.rstrip("\n").split(",")
            if label != their_label or list(map(float, probabilities)) != list(
                    map(float, their_probabilities)):
                raise RuntimeError(f"row {count} differs: batch {a!r}, sync {b!r}")
    return count


def _peak_memory(log: Path) -> float | None:
    peaks = []
    for line in log.read_text(errors="replace").splitlines():
        if '"runner.report"' in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("max_memory_mb"):
                peaks.append(entry["max_memory_mb"])
    return max(peaks) if peaks else None


def run(endpoint: str, model_id: str, processes: Processes, rows: int) -> list[Row]:
    env = child_environment(endpoint)
    [port] = free_ports(1)
    name = "batch-stack"
    stack = processes.start(name, [
        sys.executable, "-m", "devstack.run", "--port", str(port), "--emulator-port",
        endpoint.rsplit(":", 1)[1], "--workers", "1",
        "--log-dir", str(processes.log_dir / name)], env)
    try:
        wait_for_port(port, stack, "the batch stack's API", processes.log_path(name))
        api = f"http://127.0.0.1:{port}"
        source = processes.log_dir / "batch-rows.csv"
        progress(f"writing {rows:,} rows")
        size = write_rows(source, rows)
        out_batch, out_sync = source.with_name("out-batch.csv"), source.with_name("out-sync.csv")
        progress(f"ml-api predict --batch on {size / 1e6:,.0f} MB")
        ours = _cli(api, env, "predict", model_id, str(source), "--batch", "-o", str(out_batch))
        progress(f"  {ours:.1f} s; ml-api predict (sync requests)")
        baseline = _cli(api, env, "predict", model_id, str(source), "-o", str(out_sync))
        progress(f"  {baseline:.1f} s; comparing the outputs")
        compared = _same_predictions(out_batch, out_sync)
        peak = _peak_memory(processes.log_path(name))
        out_batch.unlink(missing_ok=True)
        out_sync.unlink(missing_ok=True)
    finally:
        processes.stop(stack)
    label = f"Batch predictions: {rows:,} x 4 rows ({size / 1e6:,.0f} MB), CLI end to end"
    notes = (f"ours {ours:.1f} s (`predict --batch`: upload form, run_batch in its 512 MB "
             f"worker, download), baseline {baseline:.1f} s (`predict`: sync requests under "
             f"6 MB); outputs equal for all {compared:,} rows")
    return [
        Row(label, "rows/s", ours=rows / ours, baseline=rows / baseline, higher_is_better=True,
            target=Target(beats_baseline=True), notes=notes),
        Row(f"Batch function peak memory ({rows:,} rows)", "MB", ours=peak,
            target=Target(at_most=BATCH_MEMORY_MB),
            notes="largest max_memory_mb of run_batch's REPORT lines (the worker's VmHWM); "
                  "the function's memory is 512 MB whatever the file's size"),
    ]
