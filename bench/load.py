"""A bounded load test against the whole local stack (not run in CI).

`python -m devstack.run` (API server + SQS runner with one worker per core)
on the benchmark's emulator; 8 client threads, each on its own keep-alive
connection, send 50 training requests (iris.csv) and 5,000 single-row
predictions between them, interleaved. Reported: throughput, latency
percentiles per kind, every error (there must be none), and how long until all
50 models say "Ready to Use".
"""
from __future__ import annotations

import http.client
import json
import statistics
import sys
import threading
import time

from bench.report import Row
from bench.stack import (CSV_HEADERS, HOST, IRIS_PATH, SEED_ROW, Processes, child_environment,
                         free_ports, progress, wait_for_port)

CLIENTS = 8
TRAININGS = 50
PREDICTIONS = 5000
READY_TIMEOUT = 300.0
REQUEST_TIMEOUT = 30.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client(port: int, jobs: list[tuple[str, str, bytes]], out: dict) -> None:
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    for kind, path, body in jobs:
        started = time.perf_counter()
        try:
            connection.request("POST" if kind == "train" else "GET", path, body=body,
                               headers=dict(CSV_HEADERS))
            answer = connection.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException) as error:
            out["errors"].append(f"{kind}: {type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
            continue
        out[kind].append((time.perf_counter() - started) * 1000)
        expected = 201 if kind == "train" else 202
        if answer.status != expected:
            out["errors"].append(f"{kind}: HTTP {answer.status} {payload[:200]!r}")
        elif kind == "train":
            out["models"].append(json.loads(payload)["model_id"])
    connection.close()


def _wait_until_ready(port: int, model_ids: list[str]) -> tuple[float, dict[str, int]]:
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    pending, final = set(model_ids), {}
    started = time.monotonic()
    while pending and time.monotonic() - started < READY_TIMEOUT:
        for model_id in sorted(pending):
            connection.request("POST", f"/check_model_status/{model_id}")
            status = json.loads(connection.getresponse().read())["status"]
            if status != "Model is Training":
                final[status] = final.get(status, 0) + 1
                pending.discard(model_id)
        if pending:
            time.sleep(0.5)
    connection.close()
    if pending:
        final["still training at the deadline"] = len(pending)
    return time.monotonic() - started, final


def run(endpoint: str, model_id: str, processes: Processes) -> list[Row]:
    env = child_environment(endpoint)
    [port] = free_ports(1)
    emulator_port = endpoint.rsplit(":", 1)[1]
    stack = processes.start("load-stack", [
        sys.executable, "-m", "devstack.run", "--port", str(port), "--emulator-port",
        emulator_port, "--log-dir", str(processes.log_dir / "load-stack")], env)
    try:
        wait_for_port(port, stack, "the load stack's API", processes.log_path("load-stack"))
        iris = IRIS_PATH.read_bytes()
        # Trainings spread evenly through the predictions, then dealt round-robin.
        every = PREDICTIONS // TRAININGS
        jobs = []
        for i in range(PREDICTIONS):
            if i % every == 0 and len(jobs) - i < TRAININGS:
                jobs.append(("train", "/models", iris))
            jobs.append(("predict", f"/models/{model_id}", SEED_ROW))
        shares = [jobs[i::CLIENTS] for i in range(CLIENTS)]
        out = {"train": [], "predict": [], "errors": [], "models": []}
        threads = [threading.Thread(target=_client, args=(port, share, out)) for share in shares]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        elapsed = time.perf_counter() - started
        progress(f"load: {TRAININGS + PREDICTIONS} requests in {elapsed:.1f} s, "
                 f"{len(out['errors'])} errors; waiting for {len(out['models'])} models")
        ready_seconds, final = _wait_until_ready(port, out["models"])
    finally:
        processes.stop(stack)

    answered = len(out["train"]) + len(out["predict"])
    all_ready = final.get("Ready to Use", 0) == TRAININGS
    problems = out["errors"][:5]
    if not all_ready:
        problems.append(f"models: {final}")
    notes = (f"{CLIENTS} keep-alive clients, {TRAININGS} trainings + {PREDICTIONS} predictions "
             f"interleaved, {answered} answered in {elapsed:.1f} s; predict p50 "
             f"{statistics.median(out['predict']):.2f} ms, p99 "
             f"{_percentile(out['predict'], 0.99):.2f} ms; train p50 "
             f"{statistics.median(out['train']):.1f} ms, p99 "
             f"{_percentile(out['train'], 0.99):.1f} ms; errors: {len(out['errors'])}; "
             f"final statuses {final}")
    error = None if not problems else "; ".join(problems)
    return [
        Row("Load: 50 trainings + 5,000 predictions, 8 concurrent clients, local stack",
            "req/s", answered / elapsed, None, higher_is_better=True, notes=notes, error=error),
        Row("Load: until all 50 models are Ready to Use (after the last request)", "s",
            ready_seconds, None, notes=f"runner workers = cores; {final}", error=error),
    ]
