"""Datasets too large to post: a presigned POST form (POST /uploads), then
POST /models {"upload_id"}."""
import base64
import calendar
import json
import time

import pytest
from chalice.test import Client

from app import app
from chalicelib import components, storage
from chalicelib.config import DEFAULT_MAX_UPLOAD_BYTES
from chalicelib.storage import upload_key
from tests.conftest import queue_messages
from tests.reliability import record
from tests.test_service import _train_queued

JSON = {"Content-Type": "application/json"}
UNCLAIMED_TAG = f"{storage.UPLOAD_STATE_TAG}={storage.UNCLAIMED}"


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _signed_policy(fields: dict) -> dict:
    return json.loads(base64.b64decode(fields["policy"]))


def _tags(aws, key: str) -> dict:
    tags = aws.client("s3").get_object_tagging(Bucket=components.settings().bucket, Key=key)
    return {tag["Key"]: tag["Value"] for tag in tags["TagSet"]}


def _upload(client, aws, body: bytes) -> str:
    answer = client.http.post("/uploads")
    assert answer.status_code == 201
    upload = answer.json_body
    assert upload["method"] == "POST" and upload["fields"]["key"] == upload_key(upload["upload_id"])
    # moto's in-process mock serves no HTTP: store the object as the form would.
    aws.client("s3").put_object(Bucket=components.settings().bucket,
                                Key=upload_key(upload["upload_id"]), Body=body,
                                Tagging=UNCLAIMED_TAG)
    return upload["upload_id"]


def test_training_from_an_upload(client, aws):
    upload_id = _upload(client, aws, b"a,b,label\n" + b"".join(
        b"%d,%d,%s\n" % (i, i % 7, b"x" if i % 2 else b"y") for i in range(60)))
    answer = client.http.post("/models?header=true&holdout=0.25", headers=JSON,
                              body=('{"upload_id": "%s"}' % upload_id).encode())
    assert answer.status_code == 201
    model_id = answer.json_body["model_id"]
    # Claimed: the lifecycle rule for abandoned uploads no longer applies to it.
    assert _tags(aws, upload_key(upload_id)) == {storage.UPLOAD_STATE_TAG: storage.CLAIMED}
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


def test_the_form_is_sigv4_and_its_signed_policy_bounds_the_upload(client, aws):
    """What S3 checks before it stores anything: the policy's size range, key,
    Content-Type, tag and expiry, signed with SigV4 (S3 refuses SigV2 on
    buckets made after June 2020)."""
    before = time.time()
    upload = client.http.post("/uploads").json_body
    fields = upload["fields"]
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert {"x-amz-credential", "x-amz-date", "x-amz-signature"} <= set(fields)
    assert "AWSAccessKeyId" not in fields and "signature" not in fields
    policy = _signed_policy(fields)
    conditions = policy["conditions"]
    assert ["content-length-range", 1, DEFAULT_MAX_UPLOAD_BYTES] in conditions
    assert upload["max_bytes"] == DEFAULT_MAX_UPLOAD_BYTES
    assert {"key": upload_key(upload["upload_id"])} in conditions
    assert {"bucket": components.settings().bucket} in conditions
    assert {"Content-Type": "text/csv"} in conditions and fields["Content-Type"] == "text/csv"
    # The tag the lifecycle rule looks for: a form without it is refused.
    assert {"tagging": fields["tagging"]} in conditions
    assert f"<Key>{storage.UPLOAD_STATE_TAG}</Key><Value>{storage.UNCLAIMED}</Value>" \
        in fields["tagging"]
    expires = calendar.timegm(time.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before + 3600 - 5 <= expires <= time.time() + 3600 + 5
    # Every field but the signature is covered by a condition (S3 refuses
    # fields that are not).
    covered = {name for condition in conditions if isinstance(condition, dict)
               for name in condition}
    assert set(fields) - {"policy", "x-amz-signature"} <= covered
    record("Security: AWS rules", "Upload size",
           "POST /uploads: read the signed policy of the presigned POST form",
           len(conditions), f"content-length-range 1..{DEFAULT_MAX_UPLOAD_BYTES} bytes, key, "
           f"text/csv and the unclaimed tag pinned; {fields['x-amz-algorithm']}")


def test_the_size_limit_is_a_setting(aws, monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "12345")
    components.reset()
    with Client(app) as client:
        upload = client.http.post("/uploads").json_body
    assert upload["max_bytes"] == 12345
    assert ["content-length-range", 1, 12345] in _signed_policy(upload["fields"])["conditions"]


@pytest.mark.parametrize("body, message", [
    (b"1,2,a\n1,2,a\n", "all 2 rows have the label 'a'; training needs at least 2 classes"),
    (None, "the upload {upload_id} was never sent or has expired: send the CSV"),
])
def test_a_bad_or_missing_upload_ends_in_training_failed_with_the_reason(client, aws, body,
                                                                        message):
    if body is None:
        upload_id = client.http.post("/uploads").json_body["upload_id"]  # never sent
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
