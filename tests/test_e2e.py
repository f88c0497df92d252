"""End to end: the whole local stack, started the way `make run` starts it
(the emulator, the resources, the API server and the SQS runner), exercised
over real HTTP, once on moto's server and once on LocalStack (--emulator;
tests marked moto_only run on moto's server only, for the reason they give).
AWS state is read and written through boto3 pointed at the
emulator only where a test needs to look behind the API.

The stack (tests/stack.py's running_stack) starts once for the module; every
wait is bounded.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from botocore.exceptions import ClientError

from chalicelib.queue import TrainingMessage
from devstack.ports import answers, free_ports, tail
from chalicelib.registry import ModelRecord, ModelRegistry, Status, now_iso
from chalicelib.service import new_model_id
from chalicelib.storage import PIPELINE_ARTIFACT, artifact_key, dataset_key
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
IRIS = (REPO / "iris.csv").read_bytes()
IRIS_ROWS = [line.split(",") for line in IRIS.decode().splitlines() if line.strip()]

_CONFIG = json.loads((REPO / ".chalice" / "config.json").read_text())
_DEV = _CONFIG["stages"]["dev"]["environment_variables"]
BUCKET = _DEV["MODELS_BUCKET"]
TABLE = _DEV["MODELS_TABLE"]
QUEUE = _DEV["TRAINING_QUEUE"]
DLQ = _DEV["TRAINING_DLQ"]
REGION = "us-east-1"

# The seed's texts: clients compare them, so they are spelled out here rather
# than imported from the code under test.
TRAINING_CSV_REQUIRED = ("Please post data in csv format, and make sure the label column "
                         "is the last column in the csv.")
PREDICT_CSV_REQUIRED = "Please post data in csv format."
MODEL_NOT_FOUND = ("The model id you supplied either doesn't exist or the model_id "
                   "provided is wrong.")
TRAINING_STARTED = ("You're model is being trained right now, you can check it's status "
                    "by hitting the check_task endpoint")
TRAINING = "Model is Training"
READY = "Ready to Use"
FAILED = "Training Failed"

CSV = {"Content-Type": "text/csv"}
HTTP_TIMEOUT = 30
STARTUP_TIMEOUT = 60
TRAINING_TIMEOUT = 60
QUEUE_DRAIN_TIMEOUT = 30
UNKNOWN_ID = "model_20000101-000000_000000000000"  # well-formed, never issued


# --- the stack ------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory, emulator):
    with running_stack(tmp_path_factory.mktemp(f"devstack-{emulator}"),
                       emulator=emulator) as running:
        yield running


# --- helpers --------------------------------------------------------------------

def _post_model(stack: Stack, body: bytes, content_type: str | None = "text/csv"):
    headers = {"Content-Type": content_type} if content_type else {}
    return stack.http.post(f"{stack.api}/models", data=body, headers=headers,
                           timeout=HTTP_TIMEOUT)


def _predict(stack: Stack, model_id: str, body: bytes, method: str = "POST",
             content_type: str | None = "text/csv"):
    headers = {"Content-Type": content_type} if content_type else {}
    return stack.http.request(method, f"{stack.api}/models/{model_id}", data=body,
                              headers=headers, timeout=HTTP_TIMEOUT)


def _status(stack: Stack, model_id: str, method: str = "POST"):
    return stack.http.request(method, f"{stack.api}/check_model_status/{model_id}",
                              timeout=HTTP_TIMEOUT)


def _wait_for_training(stack: Stack, model_id: str, timeout: float = TRAINING_TIMEOUT) -> dict:
    """Polls the status until it is no longer "Model is Training"; returns it."""
    return stack.wait_for_training(model_id, timeout)


@dataclass
class Trained:
    created: requests.Response
    status: dict

    @property
    def model_id(self) -> str:
        return self.created.json()["model_id"]


def _train(stack: Stack, body: bytes) -> Trained:
    created = _post_model(stack, body)
    assert created.status_code == 201, (created.status_code, created.text)
    return Trained(created, _wait_for_training(stack, created.json()["model_id"]))


def _lines(answer: requests.Response) -> list[str]:
    return answer.text.split("\n")


def _is_text(answer: requests.Response) -> bool:
    return answer.headers["Content-Type"].split(";")[0].strip() == "text/plain"


def _is_json(answer: requests.Response) -> bool:
    return answer.headers["Content-Type"].split(";")[0].strip() == "application/json"


def _features(rows: list[list[str]]) -> bytes:
    return "".join(",".join(row[:4]) + "\n" for row in rows).encode()


def _queue_counts(stack: Stack, url: str) -> tuple[int, int]:
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]))


def _wait_until_queue_empty(stack: Stack, url: str, timeout: float = QUEUE_DRAIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (counts := _queue_counts(stack, url)) != (0, 0):
        if time.monotonic() > deadline:
            pytest.fail(f"queue not empty after {timeout} s (visible, in flight) = {counts}\n"
                        f"{stack.output()}", pytrace=False)
        time.sleep(0.1)


def _stored(stack: Stack) -> tuple[set[str], set[str]]:
    """Every dataset key in S3 and every model id in DynamoDB."""
    keys = set()
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                   Prefix="datasets/"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    ids = set()
    scan = {"ProjectionExpression": "model_id", "ConsistentRead": True}
    while True:
        page = stack.table.scan(**scan)
        ids.update(item["model_id"] for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return keys, ids
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _create_queued_item(stack: Stack, body: bytes, n_features: int) -> tuple[str, str, str]:
    """Puts a dataset in S3 and a QUEUED item in DynamoDB, bypassing the API.
    Returns (model_id, task_id, dataset key); no training message is sent."""
    model_id, task_id = new_model_id(), str(uuid.uuid4())
    key = dataset_key(model_id)
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType="text/csv")
    n_rows = sum(1 for line in body.splitlines() if line.strip())
    record = ModelRecord(model_id=model_id, task_id=task_id, status=Status.QUEUED,
                         created_at=now_iso(), n_rows=n_rows, n_features=n_features,
                         dataset_key=key)
    assert ModelRegistry(stack.dynamodb_client, TABLE).create(record)
    return model_id, task_id, key


@pytest.fixture(scope="module")
def iris(stack) -> Trained:
    return _train(stack, IRIS)


# --- 1. training ----------------------------------------------------------------

def test_training_iris_answers_201_then_ready_with_its_facts(stack, iris):
    assert iris.created.status_code == 201
    assert _is_json(iris.created)
    created = iris.created.json()
    assert set(created) == {"message", "model_id", "task_id"}
    assert created["message"] == TRAINING_STARTED
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", created["model_id"])
    assert created["task_id"]

    facts = {k: v for k, v in iris.status.items() if k not in ("options", "metrics")}
    assert facts == {
        "status": READY,
        "model_id": created["model_id"],
        "task_id": created["task_id"],
        "created_at": iris.status["created_at"],
        "n_rows": 150,
        "n_features": 4,
        "classes": ["setosa", "versicolor", "virginica"],
    }
    metrics = iris.status["metrics"]  # a 20% stratified holdout: 30 rows
    assert (metrics["evaluated_on"], metrics["holdout_rows"]) == ("holdout", 30)
    assert metrics["accuracy"] > 0.85 and metrics["converged"] is True
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 30
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iris.status["created_at"])
    # GET answers like POST.
    answer = _status(stack, iris.model_id, method="GET")
    assert answer.status_code == 200 and _is_json(answer)
    assert answer.json() == iris.status


# --- 2. the seed README's prediction ----------------------------------------------

def test_predicting_the_seed_row_with_get_and_post(stack, iris):
    answer = _predict(stack, iris.model_id, b"6.9,3.1,5.1,2.3", method="GET")
    assert answer.status_code == 202, answer.text
    assert _is_json(answer)
    body = answer.json()
    assert set(body) == {"predictions", "prediction_probability"}
    assert body["predictions"] == ["virginica"]
    [probabilities] = body["prediction_probability"]
    assert len(probabilities) == 3
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probabilities)
    assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-9)
    assert probabilities.index(max(probabilities)) == 2  # virginica, the classes' order

    posted = _predict(stack, iris.model_id, b"6.9,3.1,5.1,2.3", method="POST")
    assert posted.status_code == 202, posted.text
    assert posted.json() == body


# --- 3. one row at a time equals the batch --------------------------------------------

def test_single_row_predictions_equal_batch_predictions(stack, iris):
    rows = IRIS_ROWS[::15]  # 10 rows, all three classes
    assert len(rows) == 10 and len({row[-1] for row in rows}) == 3
    batch = _predict(stack, iris.model_id, _features(rows))
    assert batch.status_code == 202, batch.text
    batch = batch.json()
    assert len(batch["predictions"]) == len(batch["prediction_probability"]) == 10

    for i, row in enumerate(rows):
        single = _predict(stack, iris.model_id, _features([row]))
        assert single.status_code == 202, single.text
        single = single.json()
        assert single["predictions"] == [batch["predictions"][i]], f"row {i}: {row}"
        [probabilities] = single["prediction_probability"]
        assert probabilities == pytest.approx(batch["prediction_probability"][i],
                                              abs=1e-12, rel=0), f"row {i}: {row}"
    # The model is good on its own training rows.
    assert batch["predictions"] == [row[-1] for row in rows]


# --- 4. numeric labels ----------------------------------------------------------

def test_integer_labels_come_back_as_json_integers(stack):
    rows = [f"{i * 0.1:.1f},{(i % 5) * 0.2:.1f},0" for i in range(20)]
    rows += [f"{5 + i * 0.1:.1f},{5 + (i % 5) * 0.2:.1f},1" for i in range(20)]
    trained = _train(stack, "\n".join(rows).encode() + b"\n")
    assert trained.status["status"] == READY, trained.status
    assert trained.status["n_rows"] == 40 and trained.status["n_features"] == 2
    classes = trained.status["classes"]
    assert classes == [0, 1] and all(type(c) is int for c in classes)

    answer = _predict(stack, trained.model_id, b"0.5,0.4\n5.5,5.4\n0.1,0.0\n")
    assert answer.status_code == 202, answer.text
    predictions = answer.json()["predictions"]
    assert predictions == [0, 1, 0]
    assert all(type(p) is int for p in predictions), answer.text


# --- 5. the seed's errors ------------------------------------------------------------

@pytest.mark.parametrize("content_type, body, detail", [
    pytest.param("application/xml", b'<data>1,2,a</data>', None, id="xml"),
    pytest.param(None, b"1,2,a\n3,4,b\n", None, id="no-content-type"),
    pytest.param("text/csv", b"1,2,a\n3,b\n", "row 2 has 2 values, expected 3", id="ragged"),
    pytest.param("text/csv; charset=utf-8", b"1,2,a\n3,4,b,c\n",
                 "row 2 has 4 values, expected 3", id="ragged-charset"),
    pytest.param("text/csv", b"", "the body is empty", id="empty"),
    pytest.param("text/csv", b"\n \n", "the body is empty", id="blank-lines"),
    pytest.param("text/csv", b"1,2,a\n3,x,b\n", "row 2, column 2: 'x' is not a number",
                 id="non-numeric"),
    pytest.param("text/csv", b"width,height,label\n1,2,a\n3,4,b\n",
                 "row 1, column 1: 'width' is not a number "
                 "(a header row? send ?header=true)", id="header-row"),
    pytest.param("text/csv", b"1,2,a\n3,nan,b\n", "row 2, column 2: 'nan' is not a finite number",
                 id="nan"),
    pytest.param("text/csv", b"1,2,a\n3,4,a\n5,6,a\n",
                 "all 3 rows have the label 'a'; training needs at least 2 classes",
                 id="single-class"),
])
def test_training_errors_are_415_with_the_seed_text(stack, content_type, body, detail):
    before = _stored(stack)
    answer = _post_model(stack, body, content_type)
    assert answer.status_code == 415, answer.text
    assert _is_text(answer)
    if detail is None:
        assert answer.text == TRAINING_CSV_REQUIRED
    else:
        assert _lines(answer) == [TRAINING_CSV_REQUIRED, detail]
    assert _stored(stack) == before  # nothing stored for a rejected upload


def test_predicting_on_an_unknown_model_is_404(stack):
    for method in ("GET", "POST"):
        answer = _predict(stack, UNKNOWN_ID, b"6.9,3.1,5.1,2.3", method=method)
        assert answer.status_code == 404 and _is_text(answer)
        assert answer.text == MODEL_NOT_FOUND


def test_status_of_an_unknown_model_is_404(stack):
    for method in ("GET", "POST"):
        answer = _status(stack, UNKNOWN_ID, method=method)
        assert answer.status_code == 404 and _is_text(answer)
        assert answer.text == MODEL_NOT_FOUND


@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", None])
def test_predicting_without_csv_is_415(stack, iris, content_type):
    for method in ("GET", "POST"):
        answer = _predict(stack, iris.model_id, b"6.9,3.1,5.1,2.3", method=method,
                          content_type=content_type)
        assert answer.status_code == 415 and _is_text(answer)
        assert answer.text == PREDICT_CSV_REQUIRED


@pytest.mark.parametrize("body, detail", [
    pytest.param(b"6.9,3.1,5.1,2.3,virginica\n",
                 "row 1 has 5 values, but the model expects 4 features "
                 "(send the features only, no label)", id="with-label"),
    pytest.param(b"6.9,3.1,5.1,2.3\n6.9,3.1,5.1\n",
                 "row 2 has 3 values, but the model expects 4 features "
                 "(send the features only, no label)", id="short-row"),
    pytest.param(b"6.9,x,5.1,2.3\n",
                 "row 1, column 2: 'x' is not a number (send feature rows only, without a "
                 "header row)", id="non-numeric"),
    pytest.param(b"", "the body is empty", id="empty"),
])
def test_predicting_on_bad_rows_is_415_naming_the_problem(stack, iris, body, detail):
    answer = _predict(stack, iris.model_id, body)
    assert answer.status_code == 415 and _is_text(answer)
    assert _lines(answer) == [PREDICT_CSV_REQUIRED, detail]


def test_predicting_on_huge_values_is_a_415_not_a_server_error(stack, iris):
    answer = _predict(stack, iris.model_id, b"1e308,1e308,1e308,1e308\n")
    assert answer.status_code == 415, (answer.status_code, answer.text)
    assert _lines(answer) == [PREDICT_CSV_REQUIRED, "the feature values are too large for "
                              "this model (scaling them overflows 64-bit floats)"]


def _raw_request(stack: Stack, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """http.client sends the path as written (requests would resolve "..")."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=HTTP_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=CSV)
        answer = connection.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize("model_id", ["model%2F..%2Fx", "a" * 65, "..", "%2E%2E", "a%20b",
                                      "a%00b", "%FF", "x.pkl"])
@pytest.mark.parametrize("method, route", [("GET", "/models/"), ("POST", "/models/"),
                                           ("GET", "/check_model_status/"),
                                           ("POST", "/check_model_status/")])
def test_ids_with_bad_characters_are_404(stack, method, route, model_id):
    status, text = _raw_request(stack, method, route + model_id, b"6.9,3.1,5.1,2.3")
    assert status == 404, (status, text)
    assert text == MODEL_NOT_FOUND


# --- 6. redelivery ---------------------------------------------------------------------

def test_a_redelivered_training_message_changes_nothing(stack, iris):
    model_id = iris.model_id
    queue_url, dlq_url = stack.queue_url(QUEUE), stack.queue_url(DLQ)
    _wait_until_queue_empty(stack, queue_url)  # the original message is done with

    item = stack.table.get_item(Key={"model_id": model_id}, ConsistentRead=True)["Item"]
    assert item["status"] == "READY"
    artifact = stack.s3.head_object(Bucket=BUCKET, Key=artifact_key(model_id, PIPELINE_ARTIFACT))
    status = _status(stack, model_id).json()
    assert status["status"] == READY
    # Timestamps have one-second resolution: let a second pass so that any
    # write the redelivery caused would show.
    deadline = time.monotonic() + 2
    while now_iso() == item["updated_at"] and time.monotonic() < deadline:
        time.sleep(0.05)

    message = {"model_id": model_id, "dataset_key": item["dataset_key"],
               "task_id": item["task_id"]}
    assert message == json.loads(TrainingMessage(**message).to_json())  # the app's shape
    stack.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message))
    _wait_until_queue_empty(stack, queue_url)

    # Handled (deleted after the handler returned), not dead-lettered.
    assert _queue_counts(stack, dlq_url) == (0, 0)
    skipped = [json.loads(line) for line in stack.output_path.read_text().splitlines()
               if line.startswith("{") and '"training.skipped"' in line]
    assert any(event["model_id"] == model_id for event in skipped), stack.output()

    assert _status(stack, model_id).json() == status
    after = stack.table.get_item(Key={"model_id": model_id}, ConsistentRead=True)["Item"]
    assert after == item
    assert after["updated_at"] == item["updated_at"]
    artifact_after = stack.s3.head_object(Bucket=BUCKET, Key=artifact_key(model_id, PIPELINE_ARTIFACT))
    assert artifact_after["ETag"] == artifact["ETag"]
    assert artifact_after["LastModified"] == artifact["LastModified"]


# --- 7. one class never becomes "Ready to Use" -----------------------------------------

def test_one_class_upload_is_refused_and_nothing_is_stored(stack):
    before = _stored(stack)
    answer = _post_model(stack, b"1,2,only\n3,4,only\n5,6,only\n7,8,only\n")
    assert answer.status_code == 415, answer.text
    assert _lines(answer) == [TRAINING_CSV_REQUIRED,
                              "all 4 rows have the label 'only'; "
                              "training needs at least 2 classes"]
    assert _stored(stack) == before


def test_one_class_dataset_behind_the_apis_back_fails_training(stack):
    model_id, task_id, key = _create_queued_item(stack, b"1,2,a\n3,4,a\n5,6,a\n", n_features=2)
    assert _status(stack, model_id).json()["status"] == TRAINING
    stack.sqs.send_message(QueueUrl=stack.queue_url(),
                           MessageBody=TrainingMessage(model_id, key, task_id).to_json())

    status = _wait_for_training(stack, model_id)
    assert status["status"] == FAILED, status
    assert status["model_id"] == model_id and status["task_id"] == task_id
    assert "classes" not in status
    assert "training needs at least 2 classes" in status["error"], status

    answer = _predict(stack, model_id, b"1,2\n")
    assert answer.status_code == 409, answer.text
    assert _is_json(answer)
    assert answer.json() == {"status": FAILED, "error": status["error"]}
    with pytest.raises(ClientError) as missing:
        stack.s3.head_object(Bucket=BUCKET, Key=artifact_key(model_id, PIPELINE_ARTIFACT))
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")


# --- 8. predicting while training -----------------------------------------------------

def test_predicting_on_a_model_still_training_answers_200_training(stack):
    # QUEUED with no message sent: it stays training for as long as the test needs.
    model_id, task_id, _ = _create_queued_item(stack, b"1,2,a\n3,4,b\n", n_features=2)
    status = _status(stack, model_id)
    assert status.status_code == 200
    assert status.json()["status"] == TRAINING
    assert status.json()["task_id"] == task_id
    for method in ("GET", "POST"):
        answer = _predict(stack, model_id, b"1,2\n", method=method)
        assert answer.status_code == 200, answer.text
        assert _is_json(answer)
        assert answer.json() == {"status": TRAINING}


# --- concurrency -------------------------------------------------------------------

def test_concurrent_clients_get_no_errors_and_every_model_trains(stack, iris):
    """A small load in CI (the bounded 5,000-request load test is in `make bench`):
    8 clients on their own connections, trainings interleaved with predictions."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.reliability import record

    clients, predictions, trainings = 8, 50, 1

    def client(_):
        session = requests.Session()
        session.trust_env = False
        answers, created = [], []
        for i in range(predictions + trainings):
            if i % (predictions // trainings + 1) == 0 and len(created) < trainings:
                answer = session.post(f"{stack.api}/models", data=IRIS, headers=CSV,
                                      timeout=HTTP_TIMEOUT)
                created.append(answer.json().get("model_id") if answer.status_code == 201
                               else None)
            else:
                answer = session.post(f"{stack.api}/models/{iris.model_id}",
                                      data=b"6.9,3.1,5.1,2.3", headers=CSV, timeout=HTTP_TIMEOUT)
                assert answer.json()["predictions"] == ["virginica"]
            answers.append(answer.status_code)
        session.close()
        return answers, created

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    elapsed = time.monotonic() - started
    statuses = [code for answers, _ in results for code in answers]
    model_ids = [model_id for _, created in results for model_id in created]
    assert sorted(set(statuses)) == [201, 202], statuses
    assert None not in model_ids
    final = [_wait_for_training(stack, model_id)["status"] for model_id in model_ids]
    assert final == [READY] * len(model_ids)
    emulator = {"moto": "moto's server", "localstack": "LocalStack"}[stack.emulator]
    record("Load", f"Concurrent clients (small, in CI), on {emulator}",
           f"{clients} clients at once, each {predictions} predictions with "
           f"{trainings} training interleaved, over keep-alive HTTP to the local stack "
           f"on {emulator}",
           len(statuses), f"{statuses.count(202)} x 202 and {statuses.count(201)} x 201 in "
           f"{elapsed:.1f} s, no errors; all {len(model_ids)} models reached \"{final[0]}\"; "
           "the bounded 5,000-request load test is in BENCHMARKS.md")


# --- the local server answers as chalice local does --------------------------------

@pytest.mark.moto_only("compares two HTTP servers in front of the same emulator")
def test_local_server_answers_exactly_as_chalice_local(stack, iris, tmp_path):
    """devstack.server (what make run serves) is chalice local's gateway with
    TCP_NODELAY and a thread per connection: same routes, same answers."""
    import subprocess
    import sys

    from devstack import stage

    ours_port, theirs_port = free_ports(2)
    env = {**os.environ, "AWS_ENDPOINT_URL": stack.endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": REGION,
           "MODEL_SIGNING_KEY": stage.dev_signing_key()}
    for name in ("PORT", "REQUIRE_API_KEY", "API_KEYS"):
        env.pop(name, None)
    chalice = str(Path(sys.executable).parent / "chalice")
    commands = {
        ours_port: [sys.executable, "-m", "devstack.server", "--port", str(ours_port)],
        theirs_port: [chalice, "local", "--host", "127.0.0.1", "--port", str(theirs_port),
                      "--no-autoreload", "--stage", "dev"],
    }
    processes = []
    try:
        for port, command in commands.items():
            with open(tmp_path / f"{port}.log", "wb") as log:
                processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not answers(port):
                assert time.monotonic() < deadline, tail(tmp_path / f"{port}.log")
                time.sleep(0.1)
        rows = "".join(",".join(row[:4]) + "\n" for row in IRIS_ROWS[::40]).encode()
        requests_to_compare = [
            ("GET", f"/models/{iris.model_id}", "text/csv", b"6.9,3.1,5.1,2.3"),
            ("POST", f"/models/{iris.model_id}", "text/csv", rows),
            ("GET", f"/models/{iris.model_id}", "application/json", b"[1]"),
            ("POST", f"/models/{iris.model_id}", "application/json",
             b'{"instances": [[6.9, 3.1, 5.1, 2.3]]}'),
            ("GET", f"/models/{iris.model_id}", "text/csv", b"1,2,3\n"),
            ("GET", f"/models/{UNKNOWN_ID}", "text/csv", b"1,2,3,4"),
            ("POST", f"/check_model_status/{iris.model_id}", None, b""),
            ("GET", f"/check_model_status/{UNKNOWN_ID}", None, b""),
            ("POST", "/models", "application/json", b"{}"),
            ("POST", "/models", "text/csv", b"1,2,a\n3,b\n"),
            ("GET", "/nowhere", None, b""),
        ]
        session = requests.Session()
        session.trust_env = False
        for method, path, content_type, body in requests_to_compare:
            headers = {"Content-Type": content_type} if content_type else {}
            ours, theirs = (session.request(method, f"http://127.0.0.1:{port}{path}", data=body,
                                            headers=headers, timeout=HTTP_TIMEOUT)
                            for port in (ours_port, theirs_port))
            assert (ours.status_code, ours.headers.get("Content-Type"), ours.content) == \
                (theirs.status_code, theirs.headers.get("Content-Type"), theirs.content), path
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


# --- lifecycle over HTTP -------------------------------------------------------------

def test_list_expire_and_delete_over_http(stack, iris):
    listed = stack.http.get(f"{stack.api}/models?status=ready&limit=100", timeout=HTTP_TIMEOUT)
    assert listed.status_code == 200
    assert iris.model_id in [m["model_id"] for m in listed.json()["models"]]
    created = stack.http.post(f"{stack.api}/models?ttl_hours=1", data=IRIS, headers=CSV,
                              timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    model_id = created.json()["model_id"]
    status = _wait_for_training(stack, model_id)
    assert status["status"] == READY and "expires_at" in status
    deleted = stack.http.delete(f"{stack.api}/models/{model_id}", timeout=HTTP_TIMEOUT)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert _status(stack, model_id).status_code == 404
    assert _predict(stack, model_id, b"6.9,3.1,5.1,2.3").status_code == 404
    keys = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"models/{model_id}/").get("KeyCount")
    assert keys == 0


def test_artifact_download_verifies_and_predicts_in_plain_scikit_learn(stack, iris):
    """What the README shows a user: fetch, check the SHA-256 the API gives (no
    key needed), unpickle, predict."""
    import hashlib
    import pickle

    import numpy as np

    answer = stack.http.get(f"{stack.api}/models/{iris.model_id}/artifact", timeout=HTTP_TIMEOUT)
    assert answer.status_code == 200, answer.text
    facts = answer.json()
    assert facts["scikit_learn_version"] == "1.9.1"
    download = requests.get(facts["url"], timeout=HTTP_TIMEOUT)
    assert download.status_code == 200
    if stack.emulator == "localstack":  # moto checks no signature (docs/localstack.md)
        forged = re.sub(r"X-Amz-Signature=[0-9a-f]{64}", "X-Amz-Signature=" + "0" * 64,
                        facts["url"])
        assert forged != facts["url"]
        refused = requests.get(forged, timeout=HTTP_TIMEOUT)
        assert refused.status_code == 403 and b"SignatureDoesNotMatch" in refused.content
    blob = download.content
    assert hashlib.sha256(blob).hexdigest() == facts["sha256"]
    pipeline = pickle.loads(blob)
    served = _predict(stack, iris.model_id, b"6.9,3.1,5.1,2.3").json()
    assert pipeline.predict([[6.9, 3.1, 5.1, 2.3]]).tolist() == served["predictions"]
    np.testing.assert_allclose(pipeline.predict_proba([[6.9, 3.1, 5.1, 2.3]]),
                               served["prediction_probability"], rtol=0, atol=1e-12)
    unknown = stack.http.get(f"{stack.api}/models/{UNKNOWN_ID}/artifact", timeout=HTTP_TIMEOUT)
    assert (unknown.status_code, unknown.text) == (404, MODEL_NOT_FOUND)


# --- a dataset too large for one request: the presigned S3 form ---------------------

def test_an_upload_form_trains_a_model(stack):
    """The dashboard's path for a large file, small: POST /uploads, the file
    through the presigned form straight to S3, then POST /models {upload_id}.
    A form whose policy does not allow what is sent (an empty file, a changed
    key) stores nothing."""
    upload = stack.http.post(f"{stack.api}/uploads", timeout=HTTP_TIMEOUT).json()
    key = upload["fields"]["key"]

    def send(body: bytes, **changes):
        return requests.post(upload["url"], data={**upload["fields"], **changes},
                             files={"file": ("iris.csv", body, "text/csv")}, timeout=HTTP_TIMEOUT)

    # Neither emulator checks a form's signature (docs/localstack.md); both
    # check its policy.
    refused = {"an empty file": send(b""), "a changed key": send(IRIS, key=key + ".other")}
    assert {name: answer.status_code for name, answer in refused.items()} == {
        "an empty file": 400, "a changed key": 403}, \
        {name: answer.text[:300] for name, answer in refused.items()}
    listed = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    assert listed["KeyCount"] == 0, listed.get("Contents")

    sent = send(IRIS)
    assert sent.status_code == 204, sent.text
    created = stack.http.post(f"{stack.api}/models", json={"upload_id": upload["upload_id"]},
                              timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    status = _wait_for_training(stack, created.json()["model_id"])
    assert status["status"] == READY, status
    assert (status["n_rows"], status["classes"]) == (150, ["setosa", "versicolor", "virginica"])


@pytest.mark.moto_only("3,000,000 rows: the trainer's time, not the emulator's; LocalStack "
                       "takes the same form in test_an_upload_form_trains_a_model")
def test_a_100_mb_csv_trains_through_a_presigned_upload(stack):
    rng = np.random.default_rng(5)
    rows = 3_000_000
    labels = rng.integers(0, 3, rows)
    features = rng.normal(0, 1, (rows, 4)) + labels[:, None]
    text = "\n".join(f"{a:.5f},{b:.5f},{c:.5f},{d:.5f},{k}" for (a, b, c, d), k
                     in zip(features.tolist(), labels.tolist())) + "\n"
    body = text.encode()
    assert len(body) > 100_000_000, len(body)  # 100 MB
    upload = stack.http.post(f"{stack.api}/uploads", timeout=HTTP_TIMEOUT).json()
    sent = requests.post(upload["url"], data=upload["fields"],
                         files={"file": ("big.csv", body, "text/csv")}, timeout=120)
    assert sent.status_code == 204, sent.text
    created = stack.http.post(f"{stack.api}/models", json={"upload_id": upload["upload_id"]},
                              timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    status = _wait_for_training(stack, created.json()["model_id"], timeout=240)
    assert status["status"] == READY, status
    assert (status["n_rows"], status["n_features"], status["classes"]) == (rows, 4, [0, 1, 2])
    assert status["metrics"]["accuracy"] > 0.6


@pytest.mark.moto_only("the API server's answer; no request reaches the emulator")
@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "BREW"])
def test_undeclared_methods_answer_405_with_allow_on_every_route(stack, method):
    """http.server alone answers a method it has no handler for with a 501
    HTML page; API Gateway hands it to the app, which answers 405 in JSON
    naming the route's methods. Every route, TRACE, CONNECT and a made-up one."""
    from urllib.parse import urlsplit

    from app import app

    address = urlsplit(stack.api)
    for route, entries in app.routes.items():
        path = route.replace("{model_id}", UNKNOWN_ID)
        connection = http.client.HTTPConnection(address.hostname, address.port,
                                                timeout=HTTP_TIMEOUT)
        try:
            connection.request(method, path)
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        assert answer.status == 405, (route, answer.status, body[:200])
        assert answer.getheader("Content-Type") == "application/json", route
        assert json.loads(body)["Message"] == f"Unsupported method: {method}"
        assert set(answer.getheader("Allow").split(", ")) == set(entries), route
