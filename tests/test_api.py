"""The HTTP contract, in process: Chalice's test client over moto's mocks."""
import json
import socket

import pytest
from chalice.test import Client

from app import app
from chalicelib import components
from chalicelib.api import MODEL_NOT_FOUND, PREDICT_CSV_REQUIRED, TRAINING_CSV_REQUIRED
from tests.conftest import IRIS

CSV = {"Content-Type": "text/csv"}


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _submit(client, body=IRIS):
    response = client.http.post("/models", headers=CSV, body=body)
    assert response.status_code == 201, response.body
    return response.json_body


def _run_trainer(client, submitted):
    model_id = submitted["model_id"]
    event = client.events.generate_sqs_event(
        queue_name=components.settings().queue,
        message_bodies=[json.dumps({"model_id": model_id, "task_id": submitted["task_id"],
                                    "dataset_key": f"datasets/{model_id}.csv"})])
    client.lambda_.invoke("train_model", event)


def _train(client, body=IRIS):
    submitted = _submit(client, body)
    _run_trainer(client, submitted)
    return submitted


def test_training_answers_201_with_the_seed_message(client):
    response = client.http.post("/models", headers={"Content-Type": "text/csv; charset=utf-8"},
                                body=IRIS)
    assert response.status_code == 201
    assert set(response.json_body) == {"message", "model_id", "task_id"}
    assert response.json_body["message"] == (
        "You're model is being trained right now, you can check it's status by hitting "
        "the check_task endpoint")


@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", None,
                                          "application/octet-stream"])
def test_training_rejects_other_content_types_with_the_seed_text(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.http.post("/models", headers=headers, body=IRIS)
    assert response.status_code == 415
    assert response.body.decode() == TRAINING_CSV_REQUIRED
    assert response.headers["Content-Type"].startswith("text/plain")


def test_unusable_csv_is_415_with_the_reason_on_line_two(client):
    response = client.http.post("/models", headers=CSV, body=b"1,2,a\n3,4,b\n5,6\n")
    assert response.status_code == 415
    assert response.body.decode().split("\n") == [TRAINING_CSV_REQUIRED,
                                                  "row 3 has 2 values, expected 3"]


def test_status_predict_lifecycle(client):
    submitted = _train(client)
    model_id = submitted["model_id"]
    for method in ("POST", "GET"):
        response = client.http.request(method, f"/check_model_status/{model_id}", body=b"",
                                       headers={})
        assert response.status_code == 200
        assert response.json_body["status"] == "Ready to Use"
        assert response.json_body["task_id"] == submitted["task_id"]
        assert response.json_body["classes"] == ["setosa", "versicolor", "virginica"]
    for method in ("GET", "POST"):
        response = client.http.request(method, f"/models/{model_id}", headers=CSV,
                                       body=b"6.9,3.1,5.1,2.3")
        assert response.status_code == 202
        assert response.json_body["predictions"] == ["virginica"]
        assert len(response.json_body["prediction_probability"][0]) == 3


def test_predict_errors(client):
    model_id = _train(client)["model_id"]
    response = client.http.get(f"/models/{model_id}", headers={"Content-Type": "application/xml"},
                               body=b"<row>1,2,3,4</row>")
    assert (response.status_code, response.body.decode()) == (415, PREDICT_CSV_REQUIRED)
    response = client.http.get(f"/models/{model_id}", headers=CSV, body=b"1,2,3\n")
    assert response.status_code == 415
    assert response.body.decode().split("\n") == [
        PREDICT_CSV_REQUIRED,
        "row 1 has 3 values, but the model expects 4 features (send the features only, no label)"]
    response = client.http.get(f"/models/{model_id}", headers=CSV, body=b"")
    assert response.body.decode().split("\n") == [PREDICT_CSV_REQUIRED, "the body is empty"]


@pytest.mark.parametrize("model_id", ["model_nope", "a" * 65, "..", "a.b", "x%00y", "%2e%2e"])
def test_unknown_or_impossible_ids_are_404_with_the_seed_text(client, model_id):
    for response in (client.http.get(f"/models/{model_id}", headers=CSV, body=b"1"),
                     client.http.post(f"/check_model_status/{model_id}")):
        assert response.status_code == 404
        assert response.body.decode() == MODEL_NOT_FOUND


def test_model_still_training_answers_200(client):
    model_id = client.http.post("/models", headers=CSV, body=IRIS).json_body["model_id"]
    response = client.http.get(f"/models/{model_id}", headers=CSV, body=b"1,2,3,4")
    assert (response.status_code, response.json_body) == (200, {"status": "Model is Training"})


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("headers, body, reason", [
    (CSV, b"", "the body is empty"),
    (CSV, b" ,\n\t,,\r\n", "the body is empty"),
    (CSV, "\u2003\ufeff".encode(), "the body is empty"),
    (CSV, b"1,\xff", "the body is not UTF-8 text (byte 2 is invalid)"),
    (JSON, b"", "the body is not JSON (Input is a zero-length, empty document: line 1 column 1 "
                "(char 0))"),
    (JSON, b"[[1, 2, 3, 4]]", 'expected an object {"instances": [[feature, ...], ...]}'),
    (JSON, b'{"instances": [[]]}', "instance 1 is an empty list; it needs the model's feature "
                                   "values"),
    (JSON, b'{"instances": [[1, "2"]]}', "instance 1, value 2: '2' is not a number"),
    (JSON, b'{"records": [{"a": null}]}', "record 1, 'a': None is not a number"),
    (JSON, b'{"records": []}', "records must be a non-empty list of objects"),
])
def test_a_malformed_body_is_415_before_the_models_state_is_looked_at(client, headers, body,
                                                                      reason):
    """Malformed whatever the model (against the OpenAPI document's shapes):
    refused even while the model trains, where a well-formed body gets the
    seed's 200 "Model is Training"; an unknown model stays the seed's 404."""
    model_id = _submit(client)["model_id"]
    first = PREDICT_CSV_REQUIRED if headers is CSV else \
        'Please post data in csv format, or as JSON {"instances": [[feature, ...], ...]}.'
    for method in ("GET", "POST"):
        response = client.http.request(method, f"/models/{model_id}", headers=headers,
                                       body=body)
        assert (response.status_code, response.body.decode().split("\n")) == \
            (415, [first, reason])
    # An unknown model is the seed's 404 whatever the body.
    response = client.http.get("/models/model_nope", headers=headers, body=body)
    assert (response.status_code, response.body.decode()) == (404, MODEL_NOT_FOUND)
    for good_headers, good_body in [(CSV, b"1,2"), (JSON, b'{"instances": [[1, 2]]}'),
                                    (JSON, b'{"records": [{"a": 1}]}')]:
        response = client.http.get(f"/models/{model_id}", headers=good_headers, body=good_body)
        assert (response.status_code, response.json_body) == \
            (200, {"status": "Model is Training"})


def test_failed_model_answers_409_with_the_reason(client):
    submitted = _submit(client, b"1,a\n2,b\n")
    # The stored dataset changed under the queued message (e.g. a bad upload):
    # the trainer finds one class only.
    components.store().put_dataset(submitted["model_id"], b"1,a\n2,a\n")
    _run_trainer(client, submitted)
    reason = "all 2 rows have the label 'a'; training needs at least 2 classes"
    status = client.http.post(f"/check_model_status/{submitted['model_id']}").json_body
    assert (status["status"], status["error"]) == ("Training Failed", reason)
    response = client.http.get(f"/models/{submitted['model_id']}", headers=CSV, body=b"1")
    assert response.status_code == 409
    assert response.json_body == {"status": "Training Failed", "error": reason}


def test_numeric_labels_stay_numbers(client):
    body = "".join(f"{i},{int(i >= 10)}\n" for i in range(20)).encode()
    model_id = _train(client, body)["model_id"]
    response = client.http.get(f"/models/{model_id}", headers=CSV, body=b"1\n19\n")
    assert response.json_body["predictions"] == [0, 1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_aws_unreachable_answers_503_with_retry_after(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MODEL_SIGNING_KEY", "k" * 32)
    components.reset()
    try:
        with Client(app) as client:
            for response in (client.http.post("/models", headers=CSV, body=IRIS),
                             client.http.post("/check_model_status/model_x"),
                             client.http.get("/models/model_x", headers=CSV, body=b"1")):
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "5"
                assert response.body.decode().startswith(
                    "The model store is unavailable right now; retry later.")
    finally:
        components.reset()


def test_predict_accepts_json_instances_with_the_same_answer_as_csv(client):
    model_id = _train(client)["model_id"]
    json_headers = {"Content-Type": "application/json"}
    as_json = client.http.post(f"/models/{model_id}", headers=json_headers,
                               body=b'{"instances": [[6.9, 3.1, 5.1, 2.3], [5, 3.5, 1, 0]]}')
    as_csv = client.http.post(f"/models/{model_id}", headers=CSV,
                              body=b"6.9,3.1,5.1,2.3\n5,3.5,1,0\n")
    assert as_json.status_code == 202
    assert as_json.json_body == as_csv.json_body


@pytest.mark.parametrize("body, reason", [
    (b"[1,2,3,4]", 'expected an object {"instances": [[feature, ...], ...]}'),
    (b'{"instances": []}', "instances must be a non-empty list of rows"),
    (b'{"instances": [[1, 2, 3]]}', "instance 1 has 3 values, but the model expects 4 features"),
    (b'{"instances": [[1, 2, 3, "x"]]}', "instance 1, value 4: 'x' is not a number"),
    (b'{"instances": [[1, 2, 3, true]]}', "instance 1, value 4: True is not a number"),
    (b'{"instances": [1]}', "instance 1 is not a list of numbers"),
    (b'{"records": [{"a": 1}]}', "records (rows by feature name) need a model trained with "
                                 "a header row (?header=true), and this model has none; send "
                                 '{"instances": [[feature, ...], ...]}'),
])
def test_bad_json_instances_are_415_with_the_reason(client, body, reason):
    model_id = _train(client)["model_id"]
    response = client.http.post(f"/models/{model_id}", headers={"Content-Type": "application/json"},
                                body=body)
    assert response.status_code == 415
    assert response.body.decode().split("\n") == [
        'Please post data in csv format, or as JSON {"instances": [[feature, ...], ...]}.', reason]
