"""Batch predictions (chalicelib.batches) against moto's in-process AWS: the
routes through Chalice's test client, run_batch invoked as SQS would."""
from __future__ import annotations

import csv
import io
import json
import random

import numpy as np
import pytest
from chalice.test import Client

from chalicelib import batches, components, storage
from chalicelib.batches import BatchMessage, BatchStatus
from chalicelib.queue import TrainingMessage
from tests.conftest import IRIS, queue_messages

CSV = {"Content-Type": "text/csv"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(aws):
    from app import app
    with Client(app, stage_name="dev") as test_client:
        yield test_client


def _train(session) -> str:
    model_id = components.service().submit(IRIS).model_id
    for message in queue_messages(session, components.settings().queue):
        components.trainer().handle(TrainingMessage.from_json(message["Body"]), 1)
    return model_id


def _run_queued(session, *, receive_count=None, **handle):
    """Runs every queued batch message once; returns what each run said."""
    sqs = session.client("sqs")
    url = sqs.get_queue_url(QueueName=components.settings().batch_queue)["QueueUrl"]
    said = []
    for message in queue_messages(session, components.settings().batch_queue):
        count = receive_count or int(message["Attributes"]["ApproximateReceiveCount"])
        said.append(components.batch_runner().handle(BatchMessage.from_json(message["Body"]),
                                                     count, **handle))
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return said


def _result(session, batch_id) -> list[list[str]]:
    body = session.client("s3").get_object(Bucket=components.settings().bucket,
                                           Key=storage.batch_result_key(batch_id))["Body"].read()
    return list(csv.reader(io.StringIO(body.decode())))


def _rows(count: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return "".join(f"{rng.uniform(4, 8):.2f},{rng.uniform(2, 4.5):.2f},"
                   f"{rng.uniform(1, 7):.2f},{rng.uniform(0.1, 2.5):.2f}\n"
                   for _ in range(count)).encode()


def _check_against_predict(client, model_id, body: bytes, table: list[list[str]]):
    if len(body) < 2**20:
        answer = client.http.post(f"/models/{model_id}", headers=CSV, body=body).json_body
    else:  # the answer would be over Lambda's 6 MB: the same service call, in-process
        answer = components.service().predict(model_id, body)
    header, lines = table[0], table[1:]
    assert header == ["row", "label", "setosa", "versicolor", "virginica"]
    assert len(lines) == len(answer["predictions"])
    assert [line[1] for line in lines] == answer["predictions"]
    assert np.array_equal(np.array([[float(v) for v in line[2:]] for line in lines]),
                          np.array(answer["prediction_probability"]))
    return lines


def test_a_posted_batch_matches_predict_row_for_row(aws, client):
    model_id = _train(aws)
    body = _rows(500)
    answer = client.http.post(f"/models/{model_id}/batches", headers=CSV, body=body)
    assert answer.status_code == 202
    batch_id = answer.json_body["batch_id"]
    assert answer.json_body["status"] == "Queued"
    status = client.http.get(f"/batches/{batch_id}").json_body
    assert (status["status"], status["rows_done"], status["rows"]) == ("Queued", 0, None)
    assert _run_queued(aws) == ["done"]
    status = client.http.get(f"/batches/{batch_id}").json_body
    assert (status["status"], status["rows_done"], status["rows"]) == ("Done", 500, 500)
    assert status["result_url"].startswith("https://") and "X-Amz-Signature" in status["result_url"]
    lines = _check_against_predict(client, model_id, body, _result(aws, batch_id))
    assert [int(line[0]) for line in lines] == list(range(1, 501))


def test_an_uploaded_batch_in_several_parts_resumes_without_duplicates(aws, client, monkeypatch):
    """Small parts and pieces, a run that dies after its second part: the
    redelivery resumes from the item's checkpoint, and the file holds every
    row once, in order."""
    monkeypatch.setattr(batches, "MIN_PART_BYTES", 5 * 2**20)
    monkeypatch.setattr("chalicelib.csvdata.CHUNK_BYTES", 2**20)
    model_id = _train(aws)
    body = _rows(200_000, seed=1)  # about 4 MB: 4 pieces, results of about 11 MB
    upload = client.http.post("/uploads").json_body
    aws.client("s3").put_object(Bucket=components.settings().bucket, Key=upload["fields"]["key"],
                                Body=body)
    answer = client.http.post(f"/models/{model_id}/batches", headers=JSON,
                              body=json.dumps({"upload_id": upload["upload_id"]}))
    assert answer.status_code == 202
    batch_id = answer.json_body["batch_id"]
    runner_store = components.batch_runner()._store
    real = runner_store.put_part
    calls = []

    def dies_after_two(*args):
        calls.append(args[2])
        if len(calls) == 2:
            real(*args)
            raise KeyboardInterrupt("killed")  # not an Exception: nothing is recorded
        return real(*args)

    monkeypatch.setattr(runner_store, "put_part", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run_queued(aws)
    item = components.batch_table().get(batch_id)
    assert item.status == BatchStatus.RUNNING and len(item.etags) == 1
    assert 0 < item.rows_done < 200_000
    # The lease runs out; the message comes back.
    aws.client("dynamodb").update_item(
        TableName=components.settings().batches_table, Key={"batch_id": {"S": batch_id}},
        UpdateExpression="SET lease_expires = :zero", ExpressionAttributeValues={":zero": {"N": "0"}})
    monkeypatch.setattr(runner_store, "put_part", real)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=components.settings().batch_queue)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=BatchMessage(batch_id, model_id).to_json())
    assert _run_queued(aws, receive_count=2) == ["done"]
    assert calls[:2] == [1, 2]  # the second part was uploaded, then again on resume
    lines = _check_against_predict(client, model_id, body, _result(aws, batch_id))
    assert [int(line[0]) for line in lines] == list(range(1, 200_001))
    assert client.http.get(f"/batches/{batch_id}").json_body["rows"] == 200_000


def test_a_run_near_its_timeout_hands_off_to_a_continuation(aws, client, monkeypatch):
    monkeypatch.setattr(batches, "MIN_PART_BYTES", 5 * 2**20)
    monkeypatch.setattr("chalicelib.csvdata.CHUNK_BYTES", 2**20)
    model_id = _train(aws)
    body = _rows(200_000, seed=2)
    batch_id = components.batches().submit(model_id, body).batch_id
    assert _run_queued(aws, remaining_seconds=lambda: 1.0) == ["continued"]
    assert components.batch_table().get(batch_id).status == BatchStatus.RUNNING
    said = []
    while not said or said[-1] == "continued":
        said += _run_queued(aws, remaining_seconds=lambda: 1.0)
    assert said[-1] == "done"
    _check_against_predict(client, model_id, body, _result(aws, batch_id))


def test_a_bad_row_fails_the_batch_with_its_row_number_and_leaves_no_parts(aws, client):
    model_id = _train(aws)
    body = _rows(50) + b"5.0,3.1,abc,0.2\n" + _rows(10)
    upload = client.http.post("/uploads").json_body
    aws.client("s3").put_object(Bucket=components.settings().bucket, Key=upload["fields"]["key"],
                                Body=body)
    batch_id = client.http.post(f"/models/{model_id}/batches", headers=JSON, body=json.dumps(
        {"upload_id": upload["upload_id"]})).json_body["batch_id"]
    assert _run_queued(aws) == ["failed"]
    status = client.http.get(f"/batches/{batch_id}").json_body
    assert status["status"] == "Failed"
    assert status["error"] == "row 51, column 3: 'abc' is not a number"
    assert "result_url" not in status
    assert aws.client("s3").list_multipart_uploads(
        Bucket=components.settings().bucket).get("Uploads", []) == []


def test_a_posted_bad_body_is_refused_at_once_and_nothing_is_stored(aws, client):
    model_id = _train(aws)
    cases = {b"1,2,3\n": "row 1 has 3 values, but the model expects 4 features",
             b"1,2,3,x\n": "row 1, column 4: 'x' is not a number",
             b"\n\n": "the body is empty"}
    for body, reason in cases.items():
        answer = client.http.post(f"/models/{model_id}/batches", headers=CSV, body=body)
        assert answer.status_code == 415 and reason in answer.body.decode(), answer.body
    answer = client.http.post(f"/models/{model_id}/batches", headers={"Content-Type": "text/plain"},
                              body=b"1,2,3,4\n")
    assert answer.status_code == 415 and "upload_id" in answer.body.decode()
    for body in (b"{}", b"[1]", b"not json", json.dumps({"upload_id": 5}).encode()):
        answer = client.http.post(f"/models/{model_id}/batches", headers=JSON, body=body)
        assert answer.status_code == 415, body
    answer = client.http.post(f"/models/{model_id}/batches", headers=JSON,
                              body=json.dumps({"upload_id": "../../etc"}))
    assert answer.status_code == 400
    never_sent = client.http.post("/uploads").json_body["upload_id"]
    answer = client.http.post(f"/models/{model_id}/batches", headers=JSON,
                              body=json.dumps({"upload_id": never_sent}))
    assert answer.status_code == 400 and "holds no file" in answer.body.decode()
    assert queue_messages(aws, components.settings().batch_queue) == []
    listing = aws.client("s3").list_objects_v2(Bucket=components.settings().bucket,
                                               Prefix=storage.BATCHES_PREFIX)
    assert listing.get("KeyCount", 0) == 0


def test_models_that_cannot_serve_are_refused_like_predict(aws, client):
    answer = client.http.post("/models/model_nope/batches", headers=CSV, body=b"1,2,3,4\n")
    assert answer.status_code == 404
    training = components.service().submit(IRIS).model_id
    answer = client.http.post(f"/models/{training}/batches", headers=CSV, body=b"1,2,3,4\n")
    assert answer.status_code == 409 and answer.json_body["status"] == "Model is Training"
    assert client.http.get("/batches/batch_" + "0" * 24).status_code == 404
    assert client.http.get("/batches/nonsense").status_code == 404
    assert client.http.delete("/batches/batch_" + "0" * 24).status_code == 404


def test_delete_removes_the_batch_and_its_results(aws, client):
    model_id = _train(aws)
    batch_id = client.http.post(f"/models/{model_id}/batches", headers=CSV,
                                body=_rows(20)).json_body["batch_id"]
    _run_queued(aws)
    assert client.http.delete(f"/batches/{batch_id}").status_code == 204
    assert client.http.get(f"/batches/{batch_id}").status_code == 404
    listing = aws.client("s3").list_objects_v2(Bucket=components.settings().bucket,
                                               Prefix=storage.BATCHES_PREFIX)
    assert listing.get("KeyCount", 0) == 0


def test_deleting_the_model_removes_its_batches_and_stops_a_queued_one(aws, client):
    model_id = _train(aws)
    done = client.http.post(f"/models/{model_id}/batches", headers=CSV,
                            body=_rows(20)).json_body["batch_id"]
    _run_queued(aws)
    queued = client.http.post(f"/models/{model_id}/batches", headers=CSV,
                              body=_rows(20)).json_body["batch_id"]
    assert client.http.delete(f"/models/{model_id}").status_code == 204
    for batch_id in (done, queued):
        assert client.http.get(f"/batches/{batch_id}").status_code == 404
    assert _run_queued(aws) == ["unknown batch"]
    listing = aws.client("s3").list_objects_v2(Bucket=components.settings().bucket)
    assert listing.get("KeyCount", 0) == 0


def test_a_batch_of_an_expired_model_fails_and_the_sweep_removes_it(aws, client, monkeypatch):
    model_id = _train(aws)
    batch_id = client.http.post(f"/models/{model_id}/batches", headers=CSV,
                                body=_rows(20)).json_body["batch_id"]
    aws.client("dynamodb").update_item(
        TableName=components.settings().table, Key={"model_id": {"S": model_id}},
        UpdateExpression="SET expires_at = :past", ExpressionAttributeValues={":past": {"N": "1"}})
    assert client.http.post(f"/models/{model_id}/batches", headers=CSV,
                            body=_rows(5)).status_code == 404
    assert _run_queued(aws) == ["failed"]
    status = client.http.get(f"/batches/{batch_id}").json_body
    assert status["status"] == "Failed" and "deleted or it expired" in status["error"]
    components.sweeper().sweep()
    assert client.http.get(f"/batches/{batch_id}").status_code == 404
    listing = aws.client("s3").list_objects_v2(Bucket=components.settings().bucket,
                                               Prefix=storage.BATCHES_PREFIX)
    assert listing.get("KeyCount", 0) == 0


def test_a_second_delivery_while_a_run_holds_the_batch_does_nothing(aws, client):
    model_id = _train(aws)
    batch_id = components.batches().submit(model_id, _rows(10)).batch_id
    taken, _ = components.batch_table().take(batch_id, "someone", 900, 1)
    assert taken
    with pytest.raises(batches.BatchInProgress):
        _run_queued(aws)
    assert components.batch_table().get(batch_id).etags == ()


def test_a_run_that_dies_on_every_delivery_reads_as_failed_with_why(aws):
    model_id = _train(aws)
    batch_id = components.batches().submit(model_id, _rows(10)).batch_id
    table = components.batch_table()
    for attempt in (1, 2, 3):
        assert table.take(batch_id, f"run{attempt}", 900, attempt)[0]
        assert table.record_lost_attempt(batch_id, attempt, "ran out of its 512 MB of memory")
    batch = table.get(batch_id)
    assert batch.status == BatchStatus.FAILED
    assert "on the last one the function ran out of its 512 MB of memory" in batch.error
    assert not table.take(batch_id, "run4", 900, 4)[0]


def test_result_cells_are_quoted_when_a_label_needs_it():
    assert batches.csv_cell('a,"b"') == '"a,""b"""'
    assert batches.csv_cell("plain") == "plain"
    assert batches.label_text(1.0) == "1.0" and batches.label_text(3) == "3"
