"""The trainer: turns a training message into a pickled scikit-learn pipeline.

scikit-learn is imported lazily: importing it costs seconds, and only the
trainer (and unpickling a model) needs it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import pickle
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

from botocore.exceptions import ClientError

from chalicelib.csvdata import CsvError, TrainingData, parse_training
from chalicelib.logs import log
from chalicelib.queue import TrainingMessage
from chalicelib.registry import ModelRegistry, Status
from chalicelib.serving import ServingModel
from chalicelib.storage import PIPELINE_ARTIFACT, SERVING_ARTIFACT, UPLOADS_PREFIX, ArtifactStore


@dataclass(frozen=True)
class TrainingOptions:
    """What POST /models accepts as query parameters (validated by the API)."""
    C: float = 1.0
    max_iter: int = 1000
    class_weight: str | None = None  # or "balanced"
    fit_intercept: bool = True
    # Fraction of rows held out for the metrics; None: 0.2 when every class
    # has at least 5 rows, else the metrics are on the training set.
    holdout: float | None = None
    header: bool = False  # the first row names the columns

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "TrainingOptions":
        return cls(**json.loads(text)) if text else cls()


def _new_pipeline(options: TrainingOptions):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is fitted here and stored with the model, so predictions are
    # scaled with the training statistics (the seed re-scaled every predict
    # batch on its own statistics, which made single-row answers meaningless).
    return Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(
        C=options.C, max_iter=options.max_iter, class_weight=options.class_weight,
        fit_intercept=options.fit_intercept))])


def fit_pipeline(data: TrainingData, options: TrainingOptions = TrainingOptions()):
    import numpy as np

    pipeline = _new_pipeline(options)
    pipeline.fit(data.features, np.asarray(data.labels))
    return pipeline


DEFAULT_HOLDOUT = 0.2
MIN_ROWS_PER_CLASS_FOR_HOLDOUT = 5


def _score(model, features, labels, classes: list) -> dict:
    from sklearn import metrics

    probabilities = model.predict_proba(features)
    predicted = model.classes_.take(probabilities.argmax(axis=1))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=model.classes_, zero_division=0)
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "log_loss": float(metrics.log_loss(labels, probabilities, labels=model.classes_)),
        "macro_f1": float(metrics.f1_score(labels, predicted, average="macro", zero_division=0)),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f),
                       "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": {"labels": classes, "rows_are": "true class",
                             "matrix": metrics.confusion_matrix(
                                 labels, predicted, labels=model.classes_).tolist()},
    }


def train_and_evaluate(data: TrainingData, options: TrainingOptions):
    """Scores the model on a stratified holdout (or, when the data is too small
    for one, on the training set, and says so), then fits the final model on
    every row. A ConvergenceWarning becomes "converged": false."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    started = time.perf_counter()
    labels = np.asarray(data.labels)
    smallest = min(Counter(data.labels).values())
    holdout = options.holdout
    if holdout is None:
        holdout = DEFAULT_HOLDOUT if smallest >= MIN_ROWS_PER_CLASS_FOR_HOLDOUT else 0.0
    evaluation: dict = {"evaluated_on": "training set"}
    if holdout > 0:
        test_rows = int(np.ceil(holdout * data.n_rows))
        if smallest >= 2 and len(data.classes) <= test_rows <= data.n_rows - len(data.classes):
            train_x, test_x, train_y, test_y = train_test_split(
                data.features, labels, test_size=test_rows, stratify=labels, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                held_out = _new_pipeline(options).fit(train_x, train_y)
            evaluation = {"evaluated_on": "holdout", "holdout_rows": test_rows,
                          **_score(held_out, test_x, test_y, data.classes)}
        else:
            evaluation["holdout_skipped"] = (
                f"a stratified holdout of {holdout:g} needs every class in both parts; "
                f"the smallest class has {smallest} rows")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        pipeline = fit_pipeline(data, options)
    if evaluation["evaluated_on"] == "training set":
        evaluation.update(_score(pipeline, data.features, labels, data.classes))
    evaluation.update(
        training_seconds=round(time.perf_counter() - started, 3),
        iterations=int(np.max(pipeline[-1].n_iter_)),
        converged=not any(issubclass(w.category, ConvergenceWarning) for w in caught))
    return pipeline, evaluation


# Serving arrays up to this size also ride in the status item (DynamoDB items
# hold 400 KB), so a cold predict needs no S3 read; larger models are read
# from serving.npz.
EMBED_LIMIT_BYTES = 64 * 1024


class TrainingInProgress(Exception):
    """Another delivery of the same message holds the model; retry later."""


class Trainer:
    def __init__(self, registry: ModelRegistry, store: ArtifactStore, max_receives: int,
                 lease_seconds: float):
        self._registry = registry
        self._store = store
        self._max_receives = max_receives
        self._lease_seconds = lease_seconds

    def _dataset(self, key: str) -> bytes:
        try:
            return self._store.get_dataset(key)
        except ClientError as error:
            # A missing upload is the client's doing (never PUT, or PUT too
            # late); a missing dataset of ours is worth retrying.
            if key.startswith(UPLOADS_PREFIX) and error.response["Error"]["Code"] == "NoSuchKey":
                raise CsvError(f"nothing was uploaded to {key}: PUT the CSV to the upload's "
                               "URL before its link expires, then train it") from None
            raise

    def _lease_lost(self, model_id: str, ids: dict) -> str:
        """The model moved on while this trainer trained. If it is gone (expired,
        deleted or being deleted), the artifacts just written are nobody's:
        removed here, since whatever removed the model has already passed by.
        If another delivery holds it or made it ready, they are that one's."""
        record = self._registry.get(model_id, include_deleting=True)
        if record is None or record.status == Status.DELETING:
            self._store.delete_artifacts(model_id)
            log("training.discarded", level=logging.WARNING,
                reason="the model expired or was deleted while it trained", **ids)
            return "discarded"
        log("training.lease_lost", level=logging.WARNING, **ids)
        return "already done"

    def handle(self, message: TrainingMessage, receive_count: int = 1) -> str:
        """Trains the message's model; returns what happened.

        Errors in the data mark the model failed and return. Anything else
        (AWS trouble, a crash) propagates so SQS delivers the message again; on
        the last receive before the dead-letter queue the model is marked failed.
        """
        ids = {"model_id": message.model_id, "task_id": message.task_id}
        record = self._registry.get(message.model_id)
        if record is None:
            log("training.skipped", reason="no such model", **ids)
            return "unknown model"
        if record.status in (Status.READY, Status.FAILED):
            log("training.skipped", reason=f"model is already {record.status}", **ids)
            return "already done"
        owner = uuid.uuid4().hex
        if not self._registry.start_training(message.model_id, owner, self._lease_seconds,
                                             receive_count):
            record = self._registry.get(message.model_id)
            if record is None or record.status in (Status.READY, Status.FAILED):
                log("training.skipped", reason="finished by another delivery", **ids)
                return "already done"
            # Held by a live trainer. If it dies, this message comes back after
            # its visibility timeout and takes over once the lease has run out.
            log("training.deferred", reason="another delivery holds the lease", **ids)
            raise TrainingInProgress(message.model_id)
        log("training.started", receive_count=receive_count, **ids)
        started = time.perf_counter()
        try:
            options = TrainingOptions.from_json(record.options)
            data = parse_training(self._dataset(message.dataset_key), options.header)
            pipeline, metrics = train_and_evaluate(data, options)
            # Both artifacts before READY: a reader never sees a ready model without them.
            pipeline_sha256 = self._store.put_artifact(
                message.model_id, PIPELINE_ARTIFACT,
                pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL))
            serving = ServingModel.from_pipeline(pipeline, data.feature_names).to_bytes()
            self._store.put_artifact(message.model_id, SERVING_ARTIFACT, serving)
            embedded = ((serving, self._store.sign(message.model_id, SERVING_ARTIFACT, serving))
                        if len(serving) <= EMBED_LIMIT_BYTES else None)
            marked = self._registry.mark_ready(
                message.model_id, data.classes, owner, embedded, metrics,
                (data.n_rows, data.n_features), data.feature_names, pipeline_sha256)
        except (CsvError, ValueError) as error:
            self._registry.mark_failed(message.model_id, str(error), owner)
            log("training.failed", level=logging.WARNING, error=str(error), **ids)
            return "failed"
        except Exception as error:
            if receive_count >= self._max_receives:
                reason = (f"training failed {receive_count} times; last error: "
                          f"{type(error).__name__}: {error}")
                self._registry.mark_failed(message.model_id, reason, owner)
            else:
                with contextlib.suppress(Exception):  # else the lease simply runs out
                    self._registry.release(message.model_id, owner)
            log("training.error", level=logging.ERROR, receive_count=receive_count,
                error=f"{type(error).__name__}: {error}", **ids)
            raise
        if not marked:
            return self._lease_lost(message.model_id, ids)
        log("training.ready", seconds=round(time.perf_counter() - started, 3),
            n_rows=data.n_rows, **ids)
        return "ready"
