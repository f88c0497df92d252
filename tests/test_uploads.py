"""Datasets over API Gateway's 10 MB: a presigned PUT, then POST /models {"upload_id"}."""
import pytest
from chalice.test import Client

from app import app
from chalicelib import components
from chalicelib.storage import upload_key
from tests.conftest import queue_messages
from tests.test_service import _train_queued

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _upload(client, aws, body: bytes) -> str:
    answer = client.http.post("/uploads")
    assert answer.status_code == 201
    upload = answer.json_body
    assert upload["method"] == "PUT" and upload["headers"] == {"Content-Type": "text/csv"}
    assert upload_key(upload["upload_id"]) in upload["url"] and "Signature=" in upload["url"]
    # moto's in-process mock serves no HTTP; put the object as the PUT would.
    aws.client("s3").put_object(Bucket=components.settings().bucket,
                                Key=upload_key(upload["upload_id"]), Body=body)
    return upload["upload_id"]


def test_training_from_an_upload(client, aws):
    upload_id = _upload(client, aws, b"a,b,label\n" + b"".join(
        b"%d,%d,%s\n" % (i, i % 7, b"x" if i % 2 else b"y") for i in range(60)))
    answer = client.http.post("/models?header=true&holdout=0.25", headers=JSON,
                              body=('{"upload_id": "%s"}' % upload_id).encode())
    assert answer.status_code == 201
    model_id = answer.json_body["model_id"]
    status = client.http.post(f"/check_model_status/{model_id}").json_body
    assert status["status"] == "Model is Training" and status["n_rows"] is None
    assert _train_queued(aws) == ["ready"]
    status = client.http.post(f"/check_model_status/{model_id}").json_body
    assert (status["status"], status["n_rows"], status["n_features"]) == ("Ready to Use", 60, 2)
    assert status["feature_names"] == ["a", "b"] and status["metrics"]["holdout_rows"] == 15
    # Deleting the model removes the uploaded dataset, which became the model's.
    assert client.http.delete(f"/models/{model_id}").status_code == 204
    s3 = aws.client("s3")
    assert s3.list_objects_v2(Bucket=components.settings().bucket).get("KeyCount") == 0


@pytest.mark.parametrize("body, message", [
    (b"1,2,a\n1,2,a\n", "all 2 rows have the label 'a'; training needs at least 2 classes"),
    (None, "the upload {upload_id} was never PUT or has expired: PUT the CSV"),
])
def test_a_bad_or_missing_upload_ends_in_training_failed_with_the_reason(client, aws, body,
                                                                        message):
    if body is None:
        upload_id = client.http.post("/uploads").json_body["upload_id"]  # never PUT
    else:
        upload_id = _upload(client, aws, body)
    model_id = client.http.post("/models", headers=JSON,
                                body=('{"upload_id": "%s"}' % upload_id).encode()
                                ).json_body["model_id"]
    assert _train_queued(aws) == ["failed"]
    status = client.http.post(f"/check_model_status/{model_id}").json_body
    assert status["status"] == "Training Failed"
    assert status["error"].startswith(message.format(upload_id=upload_id))
    # Whoever can list models sees the error: it names no S3 key.
    assert upload_key(upload_id) not in status["error"] and "uploads/" not in status["error"]


@pytest.mark.parametrize("body, status, text", [
    (b'{"upload_id": "../../etc"}', 400, "upload_id is not one POST /uploads handed out"),
    (b'{"upload_id": 5}', 415, 'A JSON body must be {"upload_id": "..."} from POST /uploads.'),
    (b'{"data": "1,2,a"}', 415, 'A JSON body must be {"upload_id": "..."} from POST /uploads.'),
    (b"not json", 415, 'A JSON body must be {"upload_id": "..."} from POST /uploads.'),
])
def test_bad_upload_references_are_refused(client, aws, body, status, text):
    answer = client.http.post("/models", headers=JSON, body=body)
    assert answer.status_code == status
    assert answer.body.decode().split("\n")[-1] == text
    assert queue_messages(aws, components.settings().queue) == []
