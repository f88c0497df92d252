"""ModelService and Trainer against moto's in-process AWS."""
import json
import pickle

import numpy as np
import pytest
from botocore.exceptions import ClientError

from chalicelib import components, storage
from chalicelib.csvdata import CsvError
from chalicelib.queue import TrainingMessage
from chalicelib.registry import ModelRecord, Status, now_iso
from chalicelib.service import ModelFailed, ModelNotFound, ModelTraining, new_model_id
from tests.conftest import IRIS, queue_messages


def _train_queued(session):
    """Runs the trainer on every queued message, as the runner would."""
    results = []
    for message in queue_messages(session, components.settings().queue):
        count = int(message["Attributes"]["ApproximateReceiveCount"])
        results.append(components.trainer().handle(TrainingMessage.from_json(message["Body"]), count))
    return results


def _objects(session, prefix=""):
    listing = session.client("s3").list_objects_v2(Bucket=components.settings().bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_submit_stores_dataset_registers_and_enqueues(aws):
    submission = components.service().submit(IRIS)
    record = components.registry().get(submission.model_id)
    assert record.status == Status.QUEUED
    assert (record.n_rows, record.n_features, record.task_id) == (150, 4, submission.task_id)
    assert _objects(aws) == [storage.dataset_key(submission.model_id)]
    [message] = queue_messages(aws, components.settings().queue)
    assert json.loads(message["Body"]) == {
        "model_id": submission.model_id, "task_id": submission.task_id,
        "dataset_key": storage.dataset_key(submission.model_id)}


def test_model_ids_are_unique_within_one_second():
    ids = {new_model_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(i.startswith("model_") and len(i) <= 64 for i in ids)


def test_bad_csv_stores_nothing(aws):
    with pytest.raises(CsvError):
        components.service().submit(b"1,2,a\n1,2,a\n")
    assert _objects(aws) == []
    assert aws.client("dynamodb").scan(TableName=components.settings().table)["Count"] == 0
    assert queue_messages(aws, components.settings().queue) == []


def test_failed_enqueue_leaves_no_model_behind(aws):
    sqs = aws.client("sqs")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=components.settings().queue)["QueueUrl"])
    with pytest.raises(ClientError):
        components.service().submit(IRIS)
    assert _objects(aws) == []
    assert aws.client("dynamodb").scan(TableName=components.settings().table)["Count"] == 0


def test_training_makes_the_model_ready_and_predictions_use_training_scaling(aws):
    submission = components.service().submit(IRIS)
    with pytest.raises(ModelTraining):
        components.service().predict(submission.model_id, b"6.9,3.1,5.1,2.3\n")
    assert _train_queued(aws) == ["ready"]
    record = components.service().record(submission.model_id)
    assert record.status == Status.READY
    assert record.classes == ["setosa", "versicolor", "virginica"]
    answer = components.service().predict(submission.model_id, b"6.9,3.1,5.1,2.3\n")
    assert answer["predictions"] == ["virginica"]
    # One row alone and the same row inside a batch get the same answer: the
    # scaler's statistics come from training, not from the request.
    batch = components.service().predict(submission.model_id, b"5.1,3.5,1.4,0.2\n6.9,3.1,5.1,2.3\n")
    assert batch["predictions"] == ["setosa", "virginica"]
    np.testing.assert_allclose(batch["prediction_probability"][1],
                               answer["prediction_probability"][0], rtol=0, atol=1e-12)
    # The stored artifact is the scikit-learn pipeline.
    blob = aws.client("s3").get_object(Bucket=components.settings().bucket,
                                       Key=storage.artifact_key(submission.model_id, storage.PIPELINE_ARTIFACT))["Body"].read()
    pipeline = pickle.loads(blob)
    np.testing.assert_allclose(pipeline.predict_proba([[6.9, 3.1, 5.1, 2.3]]),
                               answer["prediction_probability"], rtol=0, atol=1e-12)


def test_redelivered_message_is_a_no_op(aws):
    submission = components.service().submit(IRIS)
    [message] = queue_messages(aws, components.settings().queue)
    training = TrainingMessage.from_json(message["Body"])
    assert components.trainer().handle(training) == "ready"
    before = components.registry().get(submission.model_id)
    assert components.trainer().handle(training, receive_count=2) == "already done"
    assert components.registry().get(submission.model_id) == before


def _queued_record(session, body: bytes) -> TrainingMessage:
    model_id = new_model_id()
    key = components.store().put_dataset(model_id, body)
    components.registry().create(ModelRecord(
        model_id=model_id, task_id="t-1", status=Status.QUEUED, created_at=now_iso(),
        n_rows=2, n_features=1, dataset_key=key))
    return TrainingMessage(model_id, key, "t-1")


def test_data_error_in_trainer_marks_failed_and_predict_says_why(aws):
    message = _queued_record(aws, b"1,a\n2,a\n")
    assert components.trainer().handle(message) == "failed"
    record = components.service().record(message.model_id)
    assert record.status == Status.FAILED
    assert "at least 2 classes" in record.error
    assert record.public()["status"] == "Training Failed"
    with pytest.raises(ModelFailed, match="at least 2 classes"):
        components.service().predict(message.model_id, b"1\n")


def test_transient_error_is_retried_then_marked_failed_on_the_last_receive(aws):
    message = _queued_record(aws, b"1,a\n2,b\n")
    components.store().delete_dataset(message.dataset_key)  # reading it now fails
    with pytest.raises(ClientError):
        components.trainer().handle(message, receive_count=1)
    assert components.registry().get(message.model_id).status == Status.TRAINING
    with pytest.raises(ClientError):
        components.trainer().handle(message, receive_count=3)
    record = components.registry().get(message.model_id)
    assert record.status == Status.FAILED
    assert record.error.startswith("training failed 3 times; last error: NoSuchKey")


def test_unknown_and_half_submitted_models_are_not_found(aws):
    with pytest.raises(ModelNotFound):
        components.service().record("model_nope")
    components.registry().create(ModelRecord(
        model_id="model_half", task_id="t", status=Status.SUBMITTING, created_at=now_iso(),
        n_rows=1, n_features=1, dataset_key="datasets/model_half.csv"))
    with pytest.raises(ModelNotFound):
        components.service().record("model_half")
    assert components.trainer().handle(TrainingMessage("model_nope", "k", "t")) == "unknown model"


def test_status_transitions_are_conditional(aws):
    registry = components.registry()
    registry.create(ModelRecord(model_id="m", task_id="t", status=Status.QUEUED,
                                created_at=now_iso(), n_rows=1, n_features=1, dataset_key="k"))
    assert not registry.create(ModelRecord(model_id="m", task_id="t2", status=Status.QUEUED,
                                           created_at=now_iso(), n_rows=1, n_features=1,
                                           dataset_key="k"))
    assert not registry.mark_ready("m", [0, 1], "me")  # not training yet
    assert registry.start_training("m", "me", lease_seconds=60)
    assert not registry.start_training("m", "other", lease_seconds=60)  # lease held
    assert not registry.mark_ready("m", [0, 1], "other")  # not the lease holder
    assert registry.mark_ready("m", [0, 1], "me")
    assert not registry.start_training("m", "other", lease_seconds=60)
    assert not registry.mark_failed("m", "late", "me")
    assert registry.get("m").status == Status.READY


def test_an_expired_or_released_lease_can_be_taken_over(aws):
    registry = components.registry()
    registry.create(ModelRecord(model_id="m", task_id="t", status=Status.QUEUED,
                                created_at=now_iso(), n_rows=1, n_features=1, dataset_key="k"))
    assert registry.start_training("m", "crashed", lease_seconds=-1)  # already expired
    assert registry.start_training("m", "second", lease_seconds=60)
    assert not registry.mark_ready("m", [0, 1], "crashed")  # the old holder lost it
    assert registry.release("m", "second")
    assert registry.start_training("m", "third", lease_seconds=60)


def test_a_second_delivery_during_training_trains_nothing(aws, monkeypatch):
    """SQS delivers the message again while the first delivery trains: the
    conditional lease (one write, no read before it) turns the second away.
    Deterministic: the duplicate is delivered from inside the first training."""
    from chalicelib import training
    from chalicelib.training import TrainingInProgress

    submission = components.service().submit(IRIS)
    [message] = queue_messages(aws, components.settings().queue)
    training_message = TrainingMessage.from_json(message["Body"])
    fits, duplicates = [], []
    real_train = training.train_and_evaluate

    def train_while_redelivered(*args, **kwargs):
        fits.append(1)
        try:
            duplicates.append(components.trainer().handle(training_message, receive_count=2))
        except TrainingInProgress:
            duplicates.append("deferred")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training, "train_and_evaluate", train_while_redelivered)
    assert components.trainer().handle(training_message) == "ready"
    assert duplicates == ["deferred"] and len(fits) == 1
    # Once ready, another delivery changes nothing.
    before = components.registry().get(submission.model_id)
    assert components.trainer().handle(training_message, receive_count=3) == "already done"
    assert components.registry().get(submission.model_id) == before
    assert len(fits) == 1 and before.status == Status.READY


def test_a_lost_attempt_says_why_once_the_last_one_is_lost(aws):
    """What the local runner writes when a trainer's environment dies; in AWS
    nobody does, and the generic reason stays."""
    registry = components.registry()
    for model_id in ("m", "generic"):
        registry.create(ModelRecord(model_id=model_id, task_id="t", status=Status.QUEUED,
                                    created_at=now_iso(), n_rows=1, n_features=1,
                                    dataset_key="k"))
    assert registry.start_training("m", "first", lease_seconds=600, receive_count=1)
    assert not registry.record_lost_attempt("m", 2, "ran out")  # not that attempt
    assert registry.record_lost_attempt("m", 1, "ran out of its 300 MB of memory")
    # Not the last attempt: still training, and the lease is free at once.
    assert registry.get("m").public()["status"] == "Model is Training"
    assert registry.start_training("m", "second", lease_seconds=600, receive_count=2)
    assert registry.record_lost_attempt("m", 2, "was killed by SIGKILL (signal 9)")
    assert registry.start_training("m", "third", lease_seconds=-1, receive_count=3)
    # The last attempt died without a note (the runner died too): the generic reason.
    record = registry.get("m")
    assert record.status == Status.FAILED
    assert record.error.startswith("training did not finish in 3 deliveries (the trainer was "
                                   "killed, ran out of memory or timed out)")
    assert registry.record_lost_attempt("m", 3, "timed out after 900 s (lambda_timeout)")
    record = registry.get("m")
    assert record.public()["status"] == "Training Failed"
    assert record.error == ("training did not finish in 3 deliveries: on the last one the "
                            "trainer timed out after 900 s (lambda_timeout); the training "
                            "message is in the dead-letter queue")
    # Attempts that died before the trainer took the lease count too.
    registry.create(ModelRecord(model_id="early", task_id="t", status=Status.QUEUED,
                                created_at=now_iso(), n_rows=1, n_features=1, dataset_key="k"))
    for attempt in (1, 2, 3):
        assert registry.record_lost_attempt("early", attempt, "timed out after 1 s")
    record = registry.get("early")
    assert record.status == Status.FAILED and record.error.startswith(
        "training did not finish in 3 deliveries: on the last one the trainer timed out")
    registry.create(ModelRecord(model_id="early2", task_id="t", status=Status.QUEUED,
                                created_at=now_iso(), n_rows=1, n_features=1, dataset_key="k"))
    assert registry.record_lost_attempt("early2", 1, "timed out after 1 s")
    assert registry.get("early2").public()["status"] == "Model is Training"
    assert registry.start_training("early2", "next", lease_seconds=600, receive_count=2)
    # A finished model is left alone.
    assert registry.start_training("generic", "me", lease_seconds=600, receive_count=1)
    assert registry.mark_ready("generic", [0, 1], "me")
    assert not registry.record_lost_attempt("generic", 1, "ran out")
    assert registry.get("generic").status == Status.READY
