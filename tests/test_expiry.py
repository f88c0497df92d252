"""Expired models leave nothing behind: the sweep, DELETE on an expired model,
and a model that expires while it trains (issue #18, item 8). On moto's
in-process mocks, so every interleaving here is sequential; the sweep on the
local stack, concurrent with DELETEs, is in tests/test_e2e_expiry.py."""
import time

import pytest
from chalice.test import Client

from app import app
from chalicelib import components, training
from chalicelib.expiry import ExpirySweeper
from chalicelib.registry import StoredModel
from chalicelib.storage import upload_key
from devstack import scheduler
from tests.conftest import IRIS
from tests.reliability import record
from tests.test_service import _objects, _train_queued

CSV = {"Content-Type": "text/csv"}
JSON = {"Content-Type": "application/json"}
AREA = "Limits and expiry"
GRACE, RETENTION = 3600, 86400


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _submit(client, query="", upload_id=None) -> str:
    if upload_id:
        answer = client.http.post(f"/models{query}", headers=JSON,
                                  body=f'{{"upload_id": "{upload_id}"}}')
    else:
        answer = client.http.post(f"/models{query}", headers=CSV, body=IRIS)
    assert answer.status_code == 201, answer.body
    return answer.json_body["model_id"]


def _upload(aws, body=IRIS) -> str:
    upload_id = components.service().new_upload()["upload_id"]
    aws.client("s3").put_object(Bucket=components.settings().bucket, Key=upload_key(upload_id),
                                Body=body)
    return upload_id


def _expire(aws, model_id, seconds_ago=1):
    """What time does to a model with ?ttl_hours (the item stays: moto's TTL deletes nothing)."""
    aws.client("dynamodb").update_item(
        TableName=components.settings().table, Key={"model_id": {"S": model_id}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - seconds_ago)}})


def _item(aws, model_id):
    return aws.client("dynamodb").get_item(TableName=components.settings().table,
                                           Key={"model_id": {"S": model_id}}).get("Item")


def _keys_of(aws, model_id):
    return [key for key in _objects(aws) if model_id in key]


def _sweeper(later=0.0) -> ExpirySweeper:
    """The sweep as it would run `later` seconds from now."""
    return ExpirySweeper(components.registry(), components.store(),
                         orphan_grace_seconds=GRACE, upload_retention_seconds=RETENTION,
                         clock=lambda: time.time() + later)


def test_the_sweep_removes_expired_models_and_nothing_else(client, aws):
    expired_ready = _submit(client, "?ttl_hours=1")
    expired_queued = _submit(client, "?ttl_hours=1")
    later, forever = _submit(client, "?ttl_hours=2"), _submit(client)
    assert _train_queued(aws) == ["ready"] * 4
    training_now = _submit(client, "?ttl_hours=1")  # queued, alive
    _expire(aws, expired_ready)
    _expire(aws, expired_queued)
    before = {m: _keys_of(aws, m) for m in (later, forever, training_now)}
    assert len(_keys_of(aws, expired_ready)) == 3  # dataset, model.pkl, serving.npz

    report = components.sweeper().sweep()
    assert sorted(report.expired) == sorted([expired_ready, expired_queued])
    assert report.failures == [] and report.orphans == []
    for gone in (expired_ready, expired_queued):
        assert _keys_of(aws, gone) == [] and _item(aws, gone) is None
    for alive, keys in before.items():
        assert _keys_of(aws, alive) == keys and _item(aws, alive) is not None
        assert client.http.post(f"/check_model_status/{alive}").status_code == 200
    # Idempotent: nothing left to do.
    again = components.sweeper().sweep()
    assert again.counts() == {name: 0 for name in again.counts()}
    record(AREA, "Sweep: expired models",
           "2 expired models (one ready, one never trained) among 3 alive ones (a later "
           "TTL, none, one still queued); the sweep on moto's in-process mocks, then again",
           2, f"removed {len(report.expired)} models: their items and all their objects; the "
              f"alive ones keep their {sum(map(len, before.values()))} objects and answer 200; "
              "the second sweep found nothing to do")


def test_delete_on_an_expired_model_finishes_the_job(client, aws):
    model_id = _submit(client, "?ttl_hours=1")
    assert _train_queued(aws) == ["ready"]
    _expire(aws, model_id)
    assert client.http.post(f"/check_model_status/{model_id}").status_code == 404
    answer = client.http.delete(f"/models/{model_id}")
    assert (answer.status_code, answer.body) == (204, b"")
    assert _keys_of(aws, model_id) == [] and _item(aws, model_id) is None
    assert client.http.delete(f"/models/{model_id}").status_code == 404


def test_objects_whose_item_dynamodb_removed_are_found_after_the_grace(client, aws):
    model_id = _submit(client, "?ttl_hours=1")
    assert _train_queued(aws) == ["ready"]
    keys = _keys_of(aws, model_id)
    # AWS's TTL deletes the item (eventually) and nothing else.
    aws.client("dynamodb").delete_item(TableName=components.settings().table,
                                       Key={"model_id": {"S": model_id}})
    # A submission in flight: its dataset is stored a moment before its item.
    in_flight = components.store().put_dataset("model_20990101-000000_abcdefabcdef", IRIS)
    alive = _submit(client)
    assert _sweeper().sweep().orphans == []  # too recent: could be a submission's
    report = _sweeper(later=GRACE + 60).sweep()
    assert sorted(report.orphans) == sorted(keys + [in_flight])
    assert _keys_of(aws, model_id) == [] and len(_keys_of(aws, alive)) == 1
    record(AREA, "Sweep: item already removed by DynamoDB's TTL",
           "deleted a ready model's item (what AWS's TTL does) and stored a dataset with no "
           "item (a submission between its two writes); swept at once, then an hour later",
           2, f"the first sweep removed nothing; the one after the {GRACE} s grace removed "
              f"the {len(report.orphans)} objects named after models without an item; an "
              "alive model's dataset stayed")


def test_the_sweep_never_removes_a_model_that_is_alive_even_from_a_stale_view(
        client, aws, monkeypatch):
    model_id = _submit(client, "?ttl_hours=2")
    assert _train_queued(aws) == ["ready"]
    keys = _keys_of(aws, model_id)
    registry = components.registry()
    # An index that (wrongly, or lagging) says it expired an hour ago.
    monkeypatch.setattr(registry, "every_model", lambda: iter([StoredModel(
        model_id, "READY", keys[0], int(time.time()) - 3600, None)]))
    report = components.sweeper().sweep()
    assert report.expired == [] and report.failures == []
    assert _keys_of(aws, model_id) == keys
    assert client.http.post(f"/check_model_status/{model_id}").status_code == 200


def test_sweeps_and_deletes_interleaved(client, aws):
    first, second = _submit(client, "?ttl_hours=1"), _submit(client, "?ttl_hours=1")
    assert _train_queued(aws) == ["ready", "ready"]
    _expire(aws, first)
    _expire(aws, second)
    registry = components.registry()
    listing = registry.every_model

    def listing_then_delete():
        seen = list(listing())
        # A DELETE finishes the first while this sweep is between its listing and its removals.
        assert client.http.delete(f"/models/{first}").status_code == 204
        return iter(seen)

    registry.every_model = listing_then_delete
    try:
        report = components.sweeper().sweep()
    finally:
        del registry.every_model
    assert report.failures == [] and second in report.expired
    assert _keys_of(aws, first) == _keys_of(aws, second) == []
    # A DELETE cut short (hidden, then the Lambda died) is left to its retry for
    # the grace period, then finished by the sweep.
    cut_short = _submit(client)
    assert _train_queued(aws) == ["ready"]
    registry.mark_deleting(cut_short)
    assert _sweeper().sweep().finished_deletes == []
    assert len(_keys_of(aws, cut_short)) == 3
    assert _sweeper(later=GRACE + 60).sweep().finished_deletes == [cut_short]
    assert _keys_of(aws, cut_short) == [] and _item(aws, cut_short) is None


@pytest.mark.parametrize("finish", ["expired and swept", "DELETE"])
def test_a_model_gone_while_it_trains_leaves_no_artifacts(client, aws, monkeypatch, finish):
    model_id = _submit(client, "?ttl_hours=1")
    fit = training.train_and_evaluate

    def slow_fit(data, options):
        fitted = fit(data, options)
        # Meanwhile: the model expires and the sweep passes, or a DELETE comes.
        if finish == "DELETE":
            assert client.http.delete(f"/models/{model_id}").status_code == 204
        else:
            _expire(aws, model_id)
            assert components.sweeper().sweep().expired == [model_id]
        return fitted

    monkeypatch.setattr(training, "train_and_evaluate", slow_fit)
    assert _train_queued(aws) == ["discarded"]
    assert _keys_of(aws, model_id) == [] and _item(aws, model_id) is None
    record(AREA, f"Model gone while training ({finish})",
           f"the model {'expired and was swept' if finish != 'DELETE' else 'was deleted'} "
           "between the trainer's fit and its writes; the trainer then stored its artifacts",
           1, "the trainer found the model gone, removed the 2 artifacts it wrote "
              "(training.discarded); no object and no item left")


def test_uploads_go_with_the_last_model_that_uses_them(client, aws):
    alone, shared, abandoned = _upload(aws), _upload(aws), _upload(aws)
    only_user = _submit(client, "?ttl_hours=1", upload_id=alone)
    expiring = _submit(client, "?ttl_hours=1", upload_id=shared)
    staying = _submit(client, upload_id=shared)
    assert _train_queued(aws) == ["ready"] * 3
    _expire(aws, only_user)
    _expire(aws, expiring)
    report = components.sweeper().sweep()
    assert sorted(report.expired) == sorted([only_user, expiring])
    assert staying not in report.expired
    keys = _objects(aws, "uploads/")
    assert upload_key(alone) not in keys
    assert upload_key(shared) in keys and upload_key(abandoned) in keys
    # An upload no model names goes once the retention has passed; the shared
    # one is named by the model that stays.
    report = _sweeper(later=RETENTION + 60).sweep()
    assert report.uploads == [upload_key(abandoned)]
    assert _objects(aws, "uploads/") == [upload_key(shared)]
    record(AREA, "Sweep: uploads",
           "3 uploads: one used by an expired model only, one by an expired and an alive "
           "model, one never submitted; swept, then a day later", 3,
           "the first went with its model; the shared one stayed for the alive model; the "
           f"never-submitted one was removed after the {RETENTION} s retention")


def test_the_scheduler_runs_the_apps_scheduled_sweep(aws):
    import app as module

    [sweep] = scheduler.schedules(module.app, module)
    assert (sweep.name, sweep.expression) == ("sweep_expired", "rate(10 minutes)")
    assert scheduler.rate_seconds(sweep.expression) == 600
    with pytest.raises(ValueError):
        scheduler.rate_seconds("cron(0 12 * * ? *)")
    submission = components.service().submit(IRIS, ttl_hours=1)
    _expire(aws, submission.model_id)
    runner = scheduler.Scheduler([sweep], function_prefix="ml-api-dev", region="us-east-1")
    assert runner.invoke(sweep)  # through Chalice's handler, with EventBridge's event
    assert _item(aws, submission.model_id) is None and _objects(aws) == []
