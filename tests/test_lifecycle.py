"""Model lifecycle: listing, deletion, expiry (additive routes; the seed's stay)."""
import time

import pytest
from chalice.test import Client

from app import app
from chalicelib import components
from chalicelib.storage import PIPELINE_ARTIFACT, SERVING_ARTIFACT, artifact_key, dataset_key
from devstack import bootstrap
from tests.conftest import IRIS, queue_messages
from tests.test_service import _train_queued

CSV = {"Content-Type": "text/csv"}


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _submit(client, query=""):
    answer = client.http.post(f"/models{query}", headers=CSV, body=IRIS)
    assert answer.status_code == 201, answer.body
    return answer.json_body["model_id"]


def test_listing_is_newest_first_paginated_and_filtered(client, aws):
    first = _submit(client)
    assert _train_queued(aws) == ["ready"]
    later = [_submit(client) for _ in range(4)]  # queued, never trained
    pages, token = [], None
    while True:
        answer = client.http.get("/models?limit=2" + (f"&next={token}" if token else ""))
        assert answer.status_code == 200
        pages.append([m["model_id"] for m in answer.json_body["models"]])
        token = answer.json_body["next"]
        if token is None:
            break
    listed = [model_id for page in pages for model_id in page]
    created = {m: components.registry().get(m).created_at for m in [first, *later]}
    assert listed == sorted(created, key=lambda m: (created[m], m), reverse=True)
    assert all(len(page) <= 2 for page in pages)
    ready = client.http.get("/models?status=ready").json_body["models"]
    assert [(m["model_id"], m["status"]) for m in ready] == [(first, "Ready to Use")]
    training = client.http.get("/models?status=training&limit=100").json_body["models"]
    assert sorted(m["model_id"] for m in training) == sorted(later)
    assert client.http.get("/models?status=failed").json_body == {"models": [], "next": None}


_BAD_TOKEN = ("next must be the previous page's next, a creation time and a model id "
              "(2026-12-02T11:35:00Z.model_20261202-113500_0123456789ab), not {}; "
              "start again without it")


def test_any_token_of_the_documented_shape_is_a_position_in_the_listing(client, aws):
    """The OpenAPI document gives the token's shape; every token of that shape
    is accepted: the page lists the models created before that point."""
    first, second = _submit(client), _submit(client)
    newest_first = [m["model_id"] for m in client.http.get("/models").json_body["models"]]
    assert sorted(newest_first) == sorted([first, second])
    after_newest = client.http.get("/models?limit=1").json_body["next"]
    assert after_newest == (f"{components.registry().get(newest_first[0]).created_at}."
                            f"{newest_first[0]}")
    assert [m["model_id"] for m in client.http.get(f"/models?next={after_newest}")
            .json_body["models"]] == newest_first[1:]
    for token, listed in [("9999-99-99T99:99:99Z.zzz", newest_first),
                          ("0000-00-00T00:00:00Z.a", []), ("", newest_first)]:
        answer = client.http.get(f"/models?next={token}")
        assert answer.status_code == 200, answer.body
        assert [m["model_id"] for m in answer.json_body["models"]] == listed, token


@pytest.mark.parametrize("query, message", [
    ("?limit=0", "limit must be a whole number from 1 to 100, not '0'"),
    ("?limit=abc", "limit must be a whole number from 1 to 100, not 'abc'"),
    ("?status=done", "status must be one of training, ready, failed, not 'done'"),
    ("?next=bm9wZQ", _BAD_TOKEN.format("'bm9wZQ'")),
    ("?next=%7B%7D", _BAD_TOKEN.format("'{}'")),
    ("?next=" + "W" * 3000, _BAD_TOKEN.format(repr("W" * 77 + "..."))),
    # An id outside [A-Za-z0-9_-]{1,64}, a time without its Z.
    ("?next=2026-12-02T11:35:00Z.model%2Fx", _BAD_TOKEN.format("'2026-12-02T11:35:00Z.model/x'")),
    ("?next=2026-12-02T11:35:00.model_x", _BAD_TOKEN.format("'2026-12-02T11:35:00.model_x'")),
    ("?colour=red", "unknown query parameter 'colour'; this route takes limit, status, next"),
])
def test_bad_listing_parameters_are_400(client, query, message):
    answer = client.http.get(f"/models{query}")
    assert (answer.status_code, answer.body.decode()) == (400, message)


def test_delete_removes_dataset_artifacts_and_status(client, aws):
    model_id = _submit(client)
    assert _train_queued(aws) == ["ready"]
    assert client.http.get(f"/models/{model_id}", headers=CSV, body=b"1,2,3,4").status_code == 202
    answer = client.http.delete(f"/models/{model_id}")
    assert (answer.status_code, answer.body) == (204, b"")
    s3 = aws.client("s3")
    keys = s3.list_objects_v2(Bucket=components.settings().bucket).get("Contents", [])
    assert keys == []
    assert client.http.post(f"/check_model_status/{model_id}").status_code == 404
    # The deleting container forgot it at once: no answer from its cache.
    assert client.http.get(f"/models/{model_id}", headers=CSV, body=b"1,2,3,4").status_code == 404
    assert client.http.delete(f"/models/{model_id}").status_code == 404
    assert model_id not in str(client.http.get("/models").json_body)


def test_a_delete_cut_short_is_invisible_and_can_be_finished(client, aws):
    model_id = _submit(client)
    assert _train_queued(aws) == ["ready"]
    components.registry().mark_deleting(model_id)  # as if the Lambda died right after
    assert client.http.post(f"/check_model_status/{model_id}").status_code == 404
    assert model_id not in str(client.http.get("/models").json_body)
    assert client.http.delete(f"/models/{model_id}").status_code == 204
    s3 = aws.client("s3")
    for key in (dataset_key(model_id), artifact_key(model_id, PIPELINE_ARTIFACT),
                artifact_key(model_id, SERVING_ARTIFACT)):
        assert s3.list_objects_v2(Bucket=components.settings().bucket, Prefix=key)["KeyCount"] == 0
    assert components.registry().get(model_id, include_deleting=True) is None


@pytest.mark.parametrize("model_id", ["model_nope", "..", "a" * 65])
def test_deleting_unknown_or_impossible_ids_is_404(client, model_id):
    answer = client.http.delete(f"/models/{model_id}")
    assert answer.status_code == 404
    assert answer.body.decode().startswith("The model id you supplied either doesn't exist")


def test_models_expire_after_ttl_hours_even_before_dynamodb_sweeps_them(client, aws):
    model_id = _submit(client, "?ttl_hours=2")
    assert _train_queued(aws) == ["ready"]
    status = client.http.post(f"/check_model_status/{model_id}").json_body
    expires = time.mktime(time.strptime(status["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + 7200)) < 120
    # Time passes: the item is still there (DynamoDB deletes expired items
    # within days), but the model is gone for every route.
    aws.client("dynamodb").update_item(
        TableName=components.settings().table, Key={"model_id": {"S": model_id}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}})
    components.reset()  # a container that had it cached would recheck within a minute
    assert client.http.post(f"/check_model_status/{model_id}").status_code == 404
    assert client.http.get(f"/models/{model_id}", headers=CSV, body=b"1,2,3,4").status_code == 404
    assert client.http.get("/models").json_body["models"] == []


@pytest.mark.parametrize("query, message", [
    ("?ttl_hours=0", "ttl_hours must be a number from 0.0166667 to 8760, not '0'"),
    ("?ttl_hours=soon", "ttl_hours must be a number from 0.0166667 to 8760, not 'soon'"),
    ("?ttl_hours=nan", "ttl_hours must be a number from 0.0166667 to 8760, not 'nan'"),
    ("?colour=red", "unknown query parameter 'colour'; this route takes ttl_hours, C, max_iter, "
                    "class_weight, fit_intercept, holdout, header"),
])
def test_bad_training_parameters_are_400_and_store_nothing(client, aws, query, message):
    answer = client.http.post(f"/models{query}", headers=CSV, body=IRIS)
    assert (answer.status_code, answer.body.decode()) == (400, message)
    assert queue_messages(aws, components.settings().queue) == []


def test_bootstrap_adds_the_listing_index_to_an_older_table(aws):
    settings = components.settings()
    dynamodb = aws.client("dynamodb")
    dynamodb.delete_table(TableName=settings.table)
    dynamodb.create_table(TableName=settings.table, BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "model_id", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "model_id",
                                                 "AttributeType": "S"}])
    bootstrap.bootstrap(aws, settings, visibility_timeout=30)
    indexes = dynamodb.describe_table(TableName=settings.table)["Table"]["GlobalSecondaryIndexes"]
    assert [index["IndexName"] for index in indexes] == ["by_created"]


def test_artifact_answers_follow_the_model_status(client, aws):
    model_id = _submit(client)
    training = client.http.get(f"/models/{model_id}/artifact")
    assert (training.status_code, training.json_body) == (200, {"status": "Model is Training"})
    assert _train_queued(aws) == ["ready"]
    ready = client.http.get(f"/models/{model_id}/artifact").json_body
    assert f"/models/{model_id}/model.pkl" in ready["url"] and "Signature=" in ready["url"]
    assert ready["expires_in"] == 3600 and ready["classes"] == ["setosa", "versicolor", "virginica"]
    for bad in ("model_nope", "..", "a" * 65):
        assert client.http.get(f"/models/{bad}/artifact").status_code == 404
