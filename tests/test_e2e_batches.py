"""Batch predictions end to end: the whole local stack (`make run`'s, with its
second SQS runner for run_batch), over real HTTP, the input sent to the
presigned upload form and the results fetched from the presigned link."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
IRIS = (REPO / "iris.csv").read_bytes()
CSV = {"Content-Type": "text/csv"}
HTTP_TIMEOUT = 30
BATCH_TIMEOUT = 240
_DEV = json.loads((REPO / ".chalice" / "config.json").read_text())["stages"]["dev"][
    "environment_variables"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("devstack")) as running:
        yield running


@pytest.fixture(scope="module")
def model_id(stack) -> str:
    created = stack.http.post(f"{stack.api}/models", data=IRIS, headers=CSV, timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    model = created.json()["model_id"]
    assert stack.wait_for_training(model)["status"] == "Ready to Use"
    return model


def _rows(count: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    values = rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], (count, 4))
    return ("\n".join(f"{a:.2f},{b:.2f},{c:.2f},{d:.2f}" for a, b, c, d in values.tolist())
            + "\n").encode()


def _upload(stack: Stack, body: bytes) -> str:
    form = stack.http.post(f"{stack.api}/uploads", timeout=HTTP_TIMEOUT).json()
    sent = requests.post(form["url"], data=form["fields"],
                         files={"file": ("rows.csv", body, "text/csv")}, timeout=120)
    assert sent.status_code == 204, sent.text
    return form["upload_id"]


def _submit(stack: Stack, model: str, upload_id: str) -> str:
    answer = stack.http.post(f"{stack.api}/models/{model}/batches",
                             json={"upload_id": upload_id}, timeout=HTTP_TIMEOUT)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "Queued"
    return answer.json()["batch_id"]


def _wait(stack: Stack, batch_id: str, until=lambda s: s["status"] in ("Done", "Failed"),
          interval: float = 0.2) -> dict:
    deadline = time.monotonic() + BATCH_TIMEOUT
    while time.monotonic() < deadline:
        status = stack.http.get(f"{stack.api}/batches/{batch_id}", timeout=HTTP_TIMEOUT)
        assert status.status_code == 200, status.text
        if until(status.json()):
            return status.json()
        time.sleep(interval)
    pytest.fail(f"batch {batch_id} not there after {BATCH_TIMEOUT} s: {status.json()}\n"
                f"{stack.output()}", pytrace=False)


def _results(status: dict) -> list[list[str]]:
    answer = requests.get(status["result_url"], timeout=120)
    assert answer.status_code == 200
    return list(csv.reader(io.StringIO(answer.text)))


def _matches_sync_predict(stack: Stack, model: str, body: bytes, table: list[list[str]]) -> None:
    """Row for row what POST /models/{id} answers, the rows sent 40,000 at a time."""
    lines = body.splitlines(keepends=True)
    labels, probabilities = [], []
    for start in range(0, len(lines), 40_000):
        answer = stack.http.post(f"{stack.api}/models/{model}", headers=CSV,
                                 data=b"".join(lines[start:start + 40_000]), timeout=HTTP_TIMEOUT)
        assert answer.status_code == 202, answer.text
        labels += answer.json()["predictions"]
        probabilities += answer.json()["prediction_probability"]
    assert table[0] == ["row", "label", "setosa", "versicolor", "virginica"]
    assert [int(line[0]) for line in table[1:]] == list(range(1, len(lines) + 1))
    assert [line[1] for line in table[1:]] == labels
    assert np.array_equal(np.array([[float(v) for v in line[2:]] for line in table[1:]]),
                          np.array(probabilities))


def _events(stack: Stack, **match) -> list[dict]:
    found = []
    for line in stack.output_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if all(entry.get(k) == v for k, v in match.items()):
                found.append(entry)
    return found


def _children(pid: int, marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z" and marker in command:
            found.append(int(entry.name))
    return found


def test_an_uploaded_batch_matches_sync_predict_row_for_row(stack, model_id):
    body = _rows(300_000, seed=1)  # 6 MB: pieces and parts of 8 MB, results of 20 MB
    batch_id = _submit(stack, model_id, _upload(stack, body))
    status = _wait(stack, batch_id)
    assert status["status"] == "Done", status
    assert status["rows"] == status["rows_done"] == 300_000
    _matches_sync_predict(stack, model_id, body, _results(status))


def test_a_bad_row_fails_the_batch_naming_it(stack, model_id):
    body = _rows(1000, seed=2) + b"5.1,3.5,,0.2\n" + _rows(10, seed=3)
    status = _wait(stack, _submit(stack, model_id, _upload(stack, body)))
    assert status["status"] == "Failed"
    assert status["error"] == "row 1001, column 3: the value is missing"
    assert "result_url" not in status


def test_a_batch_killed_mid_way_resumes_without_duplicating_rows(stack, model_id):
    """SIGKILL the run_batch worker once a part is recorded: the redelivered
    message resumes after it, and every row is in the results once, in order."""
    body = _rows(2_000_000, seed=4)  # 40 MB: about 5 pieces
    batch_id = _submit(stack, model_id, _upload(stack, body))
    status = _wait(stack, batch_id, until=lambda s: s["rows_done"] > 0 or s["status"] in ("Done", "Failed"),
                   interval=0.05)
    assert status["status"] == "Running" and 0 < status["rows_done"] < 2_000_000, (
        f"the batch was not caught between parts: {status}")
    [runner] = _children(stack.process.pid, "--function run_batch")
    [worker] = _children(runner, "lambda_env.py")
    os.kill(worker, signal.SIGKILL)
    status = _wait(stack, batch_id)
    assert status["status"] == "Done", status
    started = _events(stack, event="batch.started", batch_id=batch_id)
    assert len(started) >= 2 and started[-1]["offset"] > 0, started
    table = _results(status)
    assert len(table) == 2_000_001
    assert [int(line[0]) for line in table[1:]] == list(range(1, 2_000_001))
    reports = [entry["max_memory_mb"] for entry in _events(stack, event="runner.report")
               if entry.get("max_memory_mb")]
    assert reports and max(reports) <= 512


def test_batches_of_a_deleted_or_expired_model(stack):
    created = stack.http.post(f"{stack.api}/models", data=IRIS, headers=CSV,
                              timeout=HTTP_TIMEOUT).json()["model_id"]
    assert stack.wait_for_training(created)["status"] == "Ready to Use"
    batch_id = stack.http.post(f"{stack.api}/models/{created}/batches", headers=CSV,
                               data=_rows(100, seed=5), timeout=HTTP_TIMEOUT).json()["batch_id"]
    _wait(stack, batch_id)
    assert stack.http.delete(f"{stack.api}/models/{created}", timeout=HTTP_TIMEOUT
                             ).status_code == 204
    assert stack.http.get(f"{stack.api}/batches/{batch_id}", timeout=HTTP_TIMEOUT
                          ).status_code == 404
    assert stack.s3.list_objects_v2(Bucket=_DEV["MODELS_BUCKET"],
                                    Prefix=f"batches/{batch_id}/").get("KeyCount", 0) == 0
    refused = stack.http.post(f"{stack.api}/models/{created}/batches", headers=CSV,
                              data=_rows(10, seed=6), timeout=HTTP_TIMEOUT)
    assert refused.status_code == 404
    # An expired model (the sweep has not come yet): refused as predict refuses it.
    expiring = stack.http.post(f"{stack.api}/models", data=IRIS, headers=CSV,
                               timeout=HTTP_TIMEOUT).json()["model_id"]
    assert stack.wait_for_training(expiring)["status"] == "Ready to Use"
    stack.dynamodb_client.update_item(
        TableName=_DEV["MODELS_TABLE"], Key={"model_id": {"S": expiring}},
        UpdateExpression="SET expires_at = :past", ExpressionAttributeValues={":past": {"N": "1"}})
    for path in (f"/models/{expiring}/batches", f"/models/{expiring}"):
        answer = stack.http.post(f"{stack.api}{path}", headers=CSV, data=_rows(10, seed=8),
                                 timeout=HTTP_TIMEOUT)
        assert answer.status_code == 404, (path, answer.text)
