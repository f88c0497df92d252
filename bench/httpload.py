"""Benchmark 4: keep-alive 1-row predicts over HTTP, requests per second.

Ours: `python -m devstack.server` (the API server `make run` starts) against
the benchmark's emulator. Baseline: `chalice local --no-autoreload` on the
same app, stage and emulator (with autoreload, chalice local stat-polls the
whole project, .venv included, every second, and restarts when any file there
changes). Both servers run side by side, idle while the other is measured;
rounds alternate ours/baseline. Each client is its own process
(bench.loadclient: raw socket, one connection, requests back to back).
"""
from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Row, Target
from bench.stack import (HOST, REPO, SEED_ROW, STAGE, Processes, child_environment, free_ports,
                         progress, tail, wait_for_port)

CLIENT_COUNTS = (1, 4)


def _ready(port: int, path: str, process: subprocess.Popen, log: Path,
           timeout: float = 60.0) -> None:
    """Waits until a predict answers 202 (the first one also loads the model)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}:\n{tail(log)}")
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            connection.request("GET", path, body=SEED_ROW, headers={"Content-Type": "text/csv"})
            answer = connection.getresponse()
            body = answer.read()
            if answer.status == 202:
                return
            last = f"{answer.status} {body[:200]!r}"
        except OSError as error:
            last = f"{type(error).__name__}: {error}"
        finally:
            connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"no 202 from {HOST}:{port}{path} within {timeout:.0f} s (last: {last})")


def _load(port: int, path: str, clients: int, seconds: float) -> dict:
    """Runs `clients` client processes at once; sums their rates."""
    start_at = time.time() + 1.0 + 0.25 * clients
    argv = [sys.executable, "-m", "bench.loadclient", "--port", str(port), "--path", path,
            "--body", SEED_ROW.decode(), "--seconds", str(seconds),
            "--start-at", f"{start_at:.6f}"]
    processes = [subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(clients)]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=seconds + 60)
            if process.returncode != 0 or not out.strip():
                raise RuntimeError(f"load client exited with {process.returncode}: "
                                   f"{err.decode(errors='replace')[-1000:]}")
            results.append(json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    ok = sum(r["statuses"].get("202", 0) / r["elapsed"] for r in results if r["elapsed"] > 0)
    other = {}
    for r in results:
        for code, count in r["statuses"].items():
            if code != "202":
                other[code] = other.get(code, 0) + count
    return {
        "rps": ok,
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "other": other,
        "errors": [e for r in results for e in r["errors"]],
        "late": max(r["late"] for r in results),
        "reconnects": sum(r["connects"] - 1 for r in results),
    }


def run(endpoint: str, model_id: str, processes: Processes, rounds: int,
        seconds: float) -> list[Row]:
    env = child_environment(endpoint)
    path = f"/models/{model_id}"
    ours_port, base_port = free_ports(2)
    chalice = str(Path(sys.executable).parent / "chalice")
    servers = {
        "ours": (ours_port, processes.start(
            "api-server", [sys.executable, "-m", "devstack.server", "--port", str(ours_port),
                           "--stage", STAGE], env)),
        "baseline": (base_port, processes.start(
            "chalice-local", [chalice, "local", "--host", HOST, "--port", str(base_port),
                              "--stage", STAGE, "--no-autoreload"], env)),
    }
    try:
        for name, (port, process) in servers.items():
            log = processes.log_path("api-server" if name == "ours" else "chalice-local")
            wait_for_port(port, process, f"{name} server", log)
            _ready(port, path, process, log)
        measured: dict[tuple[str, int], list[dict]] = {}
        for round_number in range(rounds):
            for clients in CLIENT_COUNTS:
                for name, (port, _) in servers.items():
                    result = _load(port, path, clients, seconds)
                    measured.setdefault((name, clients), []).append(result)
                    progress(f"http round {round_number + 1}/{rounds}, {clients} client(s), "
                             f"{name}: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms")
    finally:
        for _, process in servers.values():
            processes.stop(process)

    rows = []
    for clients in CLIENT_COUNTS:
        ours, base = measured[("ours", clients)], measured[("baseline", clients)]
        problems = []
        for name, results in (("ours", ours), ("baseline", base)):
            other = {}
            for r in results:
                for code, count in r["other"].items():
                    other[code] = other.get(code, 0) + count
            errors = [e for r in results for e in r["errors"]]
            if other:
                problems.append(f"{name} non-202 answers {other}")
            if errors:
                problems.append(f"{name} errors: {errors[:3]}")
            if any(r["reconnects"] for r in results):
                problems.append(f"{name} closed keep-alive connections")
        notes = (f"median of {rounds} x {seconds:g} s; client p50 latency ours "
                 f"{statistics.median(r['p50_ms'] for r in ours):.2f} ms, baseline "
                 f"{statistics.median(r['p50_ms'] for r in base):.2f} ms; rounds (ours): "
                 + ", ".join(f"{r['rps']:,.0f}" for r in ours)
                 + "; rounds (baseline): " + ", ".join(f"{r['rps']:,.0f}" for r in base))
        if statistics.median(r["p50_ms"] for r in base) > 30:
            notes += ("; the baseline's ~40 ms per answer is Nagle's algorithm meeting the "
                      "client's delayed ACK: chalice local writes headers and body in two "
                      "packets without TCP_NODELAY")
        if max(r["late"] for r in ours + base) > 0.05:
            notes += "; some clients started late (noisy machine)"
        rows.append(Row(
            f"HTTP keep-alive 1-row predicts, {clients} client{'s' if clients > 1 else ''} "
            f"(devstack.server vs chalice local)", "req/s",
            statistics.median(r["rps"] for r in ours), statistics.median(r["rps"] for r in base),
            higher_is_better=True,
            target=Target(at_least=1000) if clients == 1 else None,
            notes=notes, error="; ".join(problems) or None))
    return rows
