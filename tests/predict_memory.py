"""The peak memory of one predict request, in a fresh process.

    python -m tests.predict_memory CASE [CASE ...]   # one JSON line per case

Each case registers a ready model (its serving arrays built directly, as the
trainer would store them) on moto's in-process mocks, warms the container
with a one-row predict, then sends the case's body once through Chalice's
test client (the route a Lambda invocation reaches). What the request added
is the peak RSS during it (VmHWM, reset first through /proc/self/clear_refs)
less the RSS before it. The process runs under an address-space limit
(RLIMIT_AS, --limit-mb) so a request that would take gigabytes fails with
MemoryError instead of taking the machine with it.

Used by tests/test_limits.py, which asserts the bound; the figures are in its
RELIABILITY.md rows.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from dataclasses import dataclass

MB = 2**20
LAMBDA_PREDICT_BODY = 6 * MB


@dataclass(frozen=True)
class Case:
    what: str
    classes: list
    features: list[str] | None  # header names, for the records path
    n_features: int
    content_type: str
    body: bytes
    winner: int | None = None  # the class every row predicts, if forced


def _rows_csv(line: bytes, size: int) -> bytes:
    return line * (size // len(line))


def _json_rows(prefix: bytes, item: bytes, size: int) -> bytes:
    count = (size - len(prefix) - 2) // (len(item) + 1)
    return prefix + b",".join([item] * count) + b"]}"


@functools.cache
def cases() -> dict[str, Case]:
    """The worst bodies we know of, each for the model that makes it worst."""
    many = [f"class_{i:03d}" for i in range(300)]
    return {
        # The report: 300 classes, a 1 MB body of 500,000 one-value rows.
        "issue-300-classes": Case(
            "300-class model, 1 MB CSV body of 500,000 rows", many, None, 1, "text/csv",
            _rows_csv(b"1\n", 1_000_000)),
        # The most rows a 6 MB body holds, through each parser.
        "csv-fast-6mb": Case(
            "binary model, 6 MB CSV body of 3,145,728 one-value rows (numpy's parser)",
            ["a", "b"], None, 1, "text/csv", _rows_csv(b"1\n", LAMBDA_PREDICT_BODY)),
        "csv-precise-6mb": Case(
            "binary model, 6 MB CSV body of 2,097,152 one-value CRLF rows (the csv module)",
            ["a", "b"], None, 1, "text/csv", _rows_csv(b"1\r\n", LAMBDA_PREDICT_BODY)),
        "json-instances-6mb": Case(
            "binary model, 6 MB JSON body of 1,572,860 instances",
            ["a", "b"], None, 1, "application/json",
            _json_rows(b'{"instances":[', b"[1]", LAMBDA_PREDICT_BODY)),
        "json-records-6mb": Case(
            "binary model with a header, 6 MB JSON body of 786,430 records",
            ["a", "b"], ["x"], 1, "application/json",
            _json_rows(b'{"records":[', b'{"x":1}', LAMBDA_PREDICT_BODY)),
        # As many rows as could fit with the shortest label and numbers: they
        # are predicted, then refused when the answer is built.
        "binary-most-rows": Case(
            "binary model, 380,000 rows (about as many as could fit with the shortest numbers)",
            ["a", "b"], None, 1, "text/csv", _rows_csv(b"1\n", 760_000)),
        "300-classes-most-rows": Case(
            "300-class model, 5,100 rows (about as many as could fit with the shortest numbers)",
            many, None, 1, "text/csv", _rows_csv(b"1\n", 10_200)),
        # Rows that could fit with the short label, each predicting the long one.
        "long-label": Case(
            "binary model, labels 'a' and 99,000 characters, 200,000 rows predicting the long one",
            ["a", "x" * 99_000], None, 1, "text/csv", _rows_csv(b"1\n", 400_000), winner=1),
    }


def ready_model(classes: list, n_features: int, feature_names: list[str] | None = None,
                winner: int | None = None, model_id: str = "model_probe") -> str:
    """Registers a ready model with these classes and random coefficients (or
    one that predicts class `winner` for every row), as the trainer would
    store it; the AWS clients are components' (moto's mocks in a test)."""
    import numpy as np

    from chalicelib import components
    from chalicelib.registry import ModelRecord, Status, now_iso
    from chalicelib.serving import ServingModel
    from chalicelib.storage import SERVING_ARTIFACT

    rng = np.random.default_rng(0)
    coef = rng.normal(size=(1 if len(classes) == 2 else len(classes), n_features))
    intercept = np.zeros(coef.shape[0])
    if winner is not None:  # by a wide margin, whatever the row
        coef[:] = 0
        if len(classes) == 2:
            intercept[:] = 50 if winner == 1 else -50
        else:
            intercept[winner] = 50
    model = ServingModel(classes=np.array(classes), mean=np.zeros(n_features),
                         scale=np.ones(n_features), coef=coef, intercept=intercept,
                         feature_names=None if feature_names is None else np.array(feature_names))
    registry, store = components.registry(), components.store()
    registry.create(ModelRecord(model_id=model_id, task_id="t", status=Status.SUBMITTING,
                                created_at=now_iso(), n_rows=10, n_features=n_features,
                                dataset_key=f"datasets/{model_id}.csv",
                                feature_names=feature_names))
    registry.start_training(model_id, "probe", 60)
    store.put_artifact(model_id, SERVING_ARTIFACT, model.to_bytes())
    registry.mark_ready(model_id, list(classes), "probe")
    return model_id


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure(name: str) -> dict:
    from chalice.test import Client
    from moto import mock_aws

    import boto3
    from app import app
    from chalicelib import components
    from chalicelib.config import Settings
    from devstack import bootstrap

    case = cases()[name]
    with mock_aws():
        components.reset()
        bootstrap.bootstrap(boto3.session.Session(), Settings.from_env(), visibility_timeout=30)
        model_id = ready_model(case.classes, case.n_features, case.features, case.winner)
        with Client(app) as client:
            warm_body = (b'{"instances":[[1]]}' if case.content_type == "application/json"
                         else b"1\n")
            warm = client.http.post(f"/models/{model_id}", body=warm_body,
                                    headers={"Content-Type": case.content_type})
            if warm.status_code != 202:
                raise RuntimeError(f"warm-up answered {warm.status_code}: {warm.body[:300]!r}")
            body = case.body
            before = _status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # VmHWM := VmRSS
            started = time.perf_counter()
            try:
                answer = client.http.post(f"/models/{model_id}", body=body,
                                          headers={"Content-Type": case.content_type})
                status, text = answer.status_code, answer.body[:300].decode(errors="replace")
            except MemoryError:
                status, text = None, "MemoryError (the address-space limit)"
            seconds = time.perf_counter() - started
            peak = _status_kb("VmHWM")
    return {"case": name, "what": case.what, "body_bytes": len(case.body), "status": status,
            "answer": text, "seconds": round(seconds, 3), "rss_before_mb": round(before / 1024, 1),
            "peak_mb": round(peak / 1024, 1), "added_mb": round((peak - before) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", choices=sorted(cases()))
    parser.add_argument("--limit-mb", type=int, default=3072,
                        help="address-space limit of this process (RLIMIT_AS)")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_DEFAULT_REGION="us-east-1",
                      MODEL_SIGNING_KEY="probe-signing-key-0123456789abcdef",
                      OPENBLAS_NUM_THREADS="1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    from devstack import stage
    for variable, value in stage.stage_environment("dev").items():
        os.environ[variable] = value
    limit = args.limit_mb * MB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in args.cases:
        print(json.dumps(measure(name)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
