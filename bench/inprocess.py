"""Benchmarks 2 and 3, in this process, through the Chalice handler
(chalice.test.Client on app.app, the route a Lambda invocation reaches).

2. Warm 1-row predicts: p50/p99 of each call, alternating with the baseline
   (bare `pipeline.predict(x)` + `pipeline.predict_proba(x)` on the unpickled
   scikit-learn pipeline) so both see the same noise.
3. Bulk CSV predicts (150k and 50k rows x 4 features, iris-like random data
   with a fixed seed) vs pandas.read_csv + predict_proba + json.dumps.
"""
from __future__ import annotations

import gc
import io
import json
import math
import statistics
import time
from collections import Counter

import numpy as np

from bench.report import Row, Target
from bench.stack import CSV_HEADERS, IRIS_PATH, REPO, SEED_LABEL, SEED_ROW, progress, test_client

SEED = 20261127
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _floor_client():
    """chalice.test.Client on a one-route app that answers a constant: what the
    test client and Chalice's dispatch cost by themselves."""
    from chalice import Chalice, Response
    from chalice.test import Client

    floor = Chalice(app_name="bench-floor")
    body = ('{"predictions":["virginica"],"prediction_probability":'
            '[[5.2e-05,0.0507,0.9492]]}')

    @floor.route("/models/{model_id}", methods=["GET"], content_types=["*/*"])
    def constant(model_id):
        return Response(body=body, status_code=202,
                        headers={"Content-Type": "application/json"})

    return Client(floor, stage_name="dev", project_dir=str(REPO))


def warm(model_id: str, pipeline, calls: int, max_seconds: float) -> list[Row]:
    client = test_client()
    path = f"/models/{model_id}"

    def ours():
        return client.http.get(path, headers=dict(CSV_HEADERS), body=SEED_ROW)

    x = np.array([[float(v) for v in SEED_ROW.split(b",")]])

    def baseline():
        pipeline.predict(x)
        pipeline.predict_proba(x)

    first = ours()  # loads the model into the container's cache
    if first.status_code != 202:
        raise RuntimeError(f"warm-up predict answered {first.status_code}: {first.body[:300]!r}")
    answer = json.loads(first.body)
    if answer["predictions"] != [SEED_LABEL]:
        raise RuntimeError(f"warm-up predict gave {answer['predictions']}")
    expected = pipeline.predict_proba(x)[0]
    if not np.allclose(answer["prediction_probability"][0], expected, rtol=0, atol=1e-9):
        raise RuntimeError(f"probabilities {answer['prediction_probability'][0]} differ from "
                           f"scikit-learn's {expected.tolist()}")
    for _ in range(min(50, calls)):
        ours()
        baseline()

    ours_ns, base_ns, statuses = [], [], Counter()
    gc.collect()
    deadline = time.perf_counter() + max_seconds
    for _ in range(calls):
        started = time.perf_counter_ns()
        response = ours()
        ours_ns.append(time.perf_counter_ns() - started)
        statuses[response.status_code] += 1
        started = time.perf_counter_ns()
        baseline()
        base_ns.append(time.perf_counter_ns() - started)
        if time.perf_counter() > deadline:
            break

    floor_client = _floor_client()
    floor_ns = []
    for i in range(min(calls, 1000) + 50):
        started = time.perf_counter_ns()
        floor_client.http.get(path, headers=dict(CSV_HEADERS), body=SEED_ROW)
        if i >= 50:
            floor_ns.append(time.perf_counter_ns() - started)

    ms = 1e-6
    ours_p50, ours_p99 = percentile(ours_ns, 0.5) * ms, percentile(ours_ns, 0.99) * ms
    base_p50, base_p99 = percentile(base_ns, 0.5) * ms, percentile(base_ns, 0.99) * ms
    floor_p50 = percentile(floor_ns, 0.5) * ms
    status_text = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items()))
    cut = "" if len(ours_ns) == calls else f" (stopped at the {max_seconds:.0f} s bound)"
    progress(f"warm predict: ours p50 {ours_p50:.3f} ms p99 {ours_p99:.3f} ms; "
             f"baseline p50 {base_p50:.3f} ms p99 {base_p99:.3f} ms; floor {floor_p50:.3f} ms")
    common = (f"{len(ours_ns)} calls each{cut}, alternating; statuses {status_text}; "
              f"chalice.test.Client + Chalice dispatch alone (constant route): "
              f"p50 {floor_p50:.3f} ms")
    error = None if set(statuses) == {202} else f"non-202 answers: {status_text}"
    return [
        Row("Warm 1-row predict, p50 (chalice.test.Client -> route)", "ms", ours_p50, base_p50,
            target=Target(at_most=0.3, beats_baseline=True), notes=common, error=error),
        Row("Warm 1-row predict, p99", "ms", ours_p99, base_p99, notes=common, error=error),
    ]


def make_csv(rows: int, seed: int = SEED) -> bytes:
    """Iris-like rows: each class's feature means and spreads from iris.csv,
    normal noise, 4 decimals (about 29 bytes a row)."""
    lines = [line.split(",") for line in IRIS_PATH.read_text().splitlines() if line.strip()]
    features = np.array([[float(v) for v in line[:-1]] for line in lines])
    labels = np.array([line[-1] for line in lines])
    classes = sorted(set(labels))
    means = np.array([features[labels == c].mean(axis=0) for c in classes])
    spreads = np.array([features[labels == c].std(axis=0) for c in classes])
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(classes), size=rows)
    data = rng.normal(means[which], spreads[which])
    np.clip(data, 0.05, None, out=data)
    data[:, 0] += rng.random(rows) * 1e-5  # a fifth significant digit here and there
    buffer = io.StringIO()
    np.savetxt(buffer, data, fmt=["%.5f", "%.4f", "%.4f", "%.4f"], delimiter=",")
    return buffer.getvalue().encode()


def _pandas_baseline(pipeline, body: bytes) -> bytes:
    import pandas

    frame = pandas.read_csv(io.BytesIO(body), header=None)
    probabilities = pipeline.predict_proba(frame.to_numpy())
    predictions = pipeline.classes_.take(probabilities.argmax(axis=1))
    return json.dumps({"predictions": predictions.tolist(),
                       "prediction_probability": probabilities.tolist()}).encode()


def bulk(model_id: str, pipeline, rows: int, repeats: int, max_seconds: float,
         target: Target | None) -> Row:
    client = test_client()
    path = f"/models/{model_id}"
    body = make_csv(rows)

    def ours():
        return client.http.get(path, headers=dict(CSV_HEADERS), body=body)

    # Untimed first round: checks ours against the baseline's answer.
    first = ours()
    reference = json.loads(_pandas_baseline(pipeline, body))
    check = ""
    if first.status_code == 202:
        answer = json.loads(first.body)
        if len(answer["predictions"]) != rows:
            raise RuntimeError(f"{len(answer['predictions'])} predictions for {rows} rows")
        differ = sum(a != b for a, b in zip(answer["predictions"], reference["predictions"]))
        gap = float(np.max(np.abs(np.array(answer["prediction_probability"])
                                  - np.array(reference["prediction_probability"]))))
        check = (f"answers match scikit-learn's ({differ} labels differ, max probability gap "
                 f"{gap:.1e})") if differ == 0 and gap < 1e-9 else (
                 f"ANSWERS DIFFER from scikit-learn's: {differ} labels, max probability "
                 f"gap {gap:.1e}")
        del answer

    ours_s, base_s, statuses, sizes = [], [], Counter(), []
    base_size = 0
    deadline = time.perf_counter() + max_seconds
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        response = ours()
        ours_s.append(time.perf_counter() - started)
        statuses[response.status_code] += 1
        sizes.append(len(response.body))
        status_text = response.body[:200].decode(errors="replace")
        del response
        gc.collect()
        started = time.perf_counter()
        base_size = len(_pandas_baseline(pipeline, body))
        base_s.append(time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    progress(f"bulk {rows} rows: ours {statistics.median(ours_s):.3f} s "
             f"(status {dict(statuses)}), baseline {statistics.median(base_s):.3f} s")

    notes = [f"CSV {len(body) / 1e6:.2f} MB; median of {len(ours_s)}",
             "status " + ", ".join(f"{code} x{count}" for code, count in sorted(statuses.items())),
             f"our body {statistics.median(sizes) / 1e6:.2f} MB, the baseline's JSON "
             f"{base_size / 1e6:.2f} MB"]
    if base_size > LAMBDA_RESPONSE_LIMIT:
        notes.append("an answer that size is over Lambda's 6 MB response limit")
    if set(statuses) != {202}:
        notes.append(f"our answer: {status_text.strip()!r} (the time is for that answer)")
    if check:
        notes.append(check)
    return Row(f"{rows // 1000}k rows x 4 features CSV predict (chalice.test.Client -> route)",
               "s", statistics.median(ours_s), statistics.median(base_s), target=target,
               notes="; ".join(notes))
