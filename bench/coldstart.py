"""Benchmark 1: cold start, a new Python process from spawn to its first answer.

Ours: `import app`, then the first 1-row predict through the Chalice handler
(chalice.test.Client), which loads the model from the emulator. Baseline: a
process that imports boto3, downloads models/{id}/model.pkl, unpickles the
scikit-learn pipeline and calls predict + predict_proba on the row.

A second, informational variant calls `app.app(event, context)` the way the
Lambda runtime does, with the API Gateway event chalice.local builds (made in
the parent, handed over as JSON): it leaves out chalice.test's own imports.

The parent times each child from just before spawning it to the moment its
answer line arrives on the pipe (interpreter shutdown is not counted; it is
reported as spawn -> exit in the notes). Runs alternate ours/baseline after
one untimed run of each (it writes .pyc files and warms the page cache).
"""
from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time

from bench.report import Row, Target
from bench.stack import REPO, SEED_LABEL, SEED_ROW, child_environment, progress

OURS = r'''
import time
_t0 = time.perf_counter()
import json, sys
import app
_t1 = time.perf_counter()
from chalice.test import Client
_t2 = time.perf_counter()
model_id, project_dir, row = sys.argv[1], sys.argv[2], sys.argv[3].encode()
with Client(app.app, stage_name="dev", project_dir=project_dir) as client:
    answer = client.http.get(f"/models/{model_id}", headers={"Content-Type": "text/csv"},
                             body=row)
_t3 = time.perf_counter()
print("BENCH-ANSWER " + json.dumps({"status": answer.status_code,
                  "body": answer.body[:400].decode("utf-8", "replace"),
                  "phases": {"import app": _t1 - _t0, "import chalice.test": _t2 - _t1,
                             "first predict": _t3 - _t2}}), flush=True)
'''

LAMBDA_STYLE = r'''
import time
_t0 = time.perf_counter()
import json, sys
import app
_t1 = time.perf_counter()


class Context:
    function_name = "ml-api-dev"
    memory_limit_in_mb = 128
    aws_request_id = "bench-cold-start"

    def get_remaining_time_in_millis(self):
        return 30000


answer = app.app(json.loads(sys.argv[1]), Context())
_t2 = time.perf_counter()
body = answer.get("body") or ""
if answer.get("isBase64Encoded"):
    import base64
    body = base64.b64decode(body).decode("utf-8", "replace")
print("BENCH-ANSWER " + json.dumps({"status": answer["statusCode"], "body": body[:400],
                  "phases": {"import app": _t1 - _t0, "first predict": _t2 - _t1}}), flush=True)
'''

BASELINE = r'''
import time
_t0 = time.perf_counter()
import json, pickle, sys
import boto3
import numpy as np
model_id, bucket, row = sys.argv[1], sys.argv[2], sys.argv[3]
_t1 = time.perf_counter()
blob = boto3.client("s3").get_object(Bucket=bucket,
                                     Key=f"models/{model_id}/model.pkl")["Body"].read()
_t2 = time.perf_counter()
pipeline = pickle.loads(blob)
_t3 = time.perf_counter()
x = np.array([[float(v) for v in row.split(",")]])
predictions = pipeline.predict(x)
probabilities = pipeline.predict_proba(x)
_t4 = time.perf_counter()
print("BENCH-ANSWER " + json.dumps({"predictions": predictions.tolist(),
                  "prediction_probability": probabilities.tolist(),
                  "phases": {"import boto3+numpy": _t1 - _t0, "download": _t2 - _t1,
                             "unpickle (imports sklearn)": _t3 - _t2,
                             "predict+predict_proba": _t4 - _t3}}), flush=True)
'''


MARK = b"BENCH-ANSWER "


def spawn_to_answer(argv: list[str], env: dict[str, str], timeout: float = 120.0
                    ) -> tuple[float, float, dict]:
    """Seconds from spawn to the child's answer line, seconds to its exit, and the
    answer. The answer line starts with MARK: the app may print to stdout too
    (Chalice logs errors there, as Lambda expects)."""
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=stderr)
        answer, answered, exited = None, None, None
        buffer = b""
        try:
            deadline = started + timeout
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                while answer is None:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        raise RuntimeError(f"no answer within {timeout:.0f} s")
                    if not selector.select(remaining):
                        continue
                    chunk = os.read(process.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buffer += chunk
                    for line in buffer.split(b"\n")[:-1]:
                        if line.startswith(MARK):
                            answered = time.perf_counter() - started
                            answer = line[len(MARK):]
                            break
            process.wait(timeout=max(1.0, deadline - time.perf_counter()))
            exited = time.perf_counter() - started
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        if process.returncode != 0 or answer is None:
            stderr.seek(0)
            error = stderr.read().decode(errors="replace")[-1500:]
            raise RuntimeError(f"child exited with code {process.returncode}; stdout "
                               f"{buffer[-800:].decode(errors='replace')!r}; stderr {error!r}")
    return answered, exited, json.loads(answer)


def _check_ours(payload: dict) -> None:
    if payload["status"] != 202:
        raise RuntimeError(f"first predict answered {payload['status']}: {payload['body']}")
    predictions = json.loads(payload["body"])["predictions"]
    if predictions != [SEED_LABEL]:
        raise RuntimeError(f"first predict gave {predictions}, expected [{SEED_LABEL!r}]")


def _check_baseline(payload: dict) -> None:
    if payload["predictions"] != [SEED_LABEL]:
        raise RuntimeError(f"baseline predicted {payload['predictions']}")


def _median_phases(payloads: list[dict]) -> str:
    names = payloads[0]["phases"]
    return ", ".join(f"{name} {statistics.median(p['phases'][name] for p in payloads):.3f} s"
                     for name in names)


def api_gateway_event(model_id: str) -> str:
    """The event API Gateway sends for the predict route, as chalice.local builds it."""
    from chalice.local import LambdaEventConverter, RouteMatcher

    import app

    converter = LambdaEventConverter(RouteMatcher(list(app.app.routes)),
                                     app.app.api.binary_types)
    event = converter.create_lambda_event(
        method="GET", path=f"/models/{model_id}", headers={"content-type": "text/csv"},
        body=SEED_ROW)
    event["body"] = SEED_ROW.decode()  # API Gateway sends text bodies as str
    event["isBase64Encoded"] = False
    return json.dumps(event)


def run(endpoint: str, model_id: str, repeats: int) -> list[Row]:
    env = child_environment(endpoint)
    variants = {
        "ours": ([sys.executable, "-c", OURS, model_id, str(REPO), SEED_ROW.decode()],
                 _check_ours),
        "lambda": ([sys.executable, "-c", LAMBDA_STYLE, api_gateway_event(model_id)],
                   _check_ours),
        "baseline": ([sys.executable, "-c", BASELINE, model_id, env["MODELS_BUCKET"],
                      SEED_ROW.decode()], _check_baseline),
    }
    runs: dict[str, list[tuple[float, float, dict]]] = {name: [] for name in variants}
    progress("cold start: one untimed run of each")
    for argv, check in variants.values():
        check(spawn_to_answer(argv, env)[2])
    for i in range(repeats):
        for name, (argv, check) in variants.items():
            runs[name].append(spawn_to_answer(argv, env))
            check(runs[name][-1][2])
        progress(f"cold start {i + 1}/{repeats}: " + ", ".join(
            f"{name} {runs[name][-1][0]:.3f} s" for name in variants))

    def answer(name: str) -> float:
        return statistics.median(r[0] for r in runs[name])

    def exit_(name: str) -> float:
        return statistics.median(r[1] for r in runs[name])

    def all_runs(name: str) -> str:
        return ", ".join(f"{r[0]:.3f}" for r in runs[name])

    ours, lam, base = runs["ours"], runs["lambda"], runs["baseline"]
    # The target row is what Lambda runs: the handler called with the event,
    # no test harness (importing chalice.test alone costs about 0.1 s).
    return [
        Row("Cold start: new process -> import app -> app.app(event, context), model from "
            "the emulator, first 1-row predict", "s", answer("lambda"), answer("baseline"),
            target=Target(at_most=0.6, min_speedup=4),
            notes=(f"median of {repeats}, spawn -> answer line; the API Gateway event "
                   f"chalice.local builds; spawn -> exit {exit_('lambda'):.3f} s (baseline "
                   f"{exit_('baseline'):.3f} s). Inside: {_median_phases([r[2] for r in lam])}. "
                   f"Inside baseline: {_median_phases([r[2] for r in base])}. Runs: "
                   f"{all_runs('lambda')}; baseline {all_runs('baseline')}")),
        Row("Cold start through chalice.test.Client (harness cost included)", "s",
            answer("ours"), answer("baseline"),
            notes=(f"median of {repeats}, spawn -> answer line (spawn -> exit {exit_('ours'):.3f} s). "
                   f"Inside: {_median_phases([r[2] for r in ours])}. Runs: {all_runs('ours')}")),
    ]
