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
from dataclasses import asdict, dataclass

from botocore.exceptions import ClientError

from chalicelib.csvdata import BLOCK_ROWS, CsvError, TrainingData, parse_training
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


def _classifier(options: TrainingOptions, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=options.C, max_iter=options.max_iter,
                              class_weight=options.class_weight,
                              fit_intercept=options.fit_intercept, warm_start=warm_start)


def _new_pipeline(options: TrainingOptions):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is fitted here and stored with the model, so predictions are
    # scaled with the training statistics (the seed re-scaled every predict
    # batch on its own statistics, which made single-row answers meaningless).
    return Pipeline([("scale", StandardScaler()), ("classify", _classifier(options))])


def fit_pipeline(data: TrainingData, options: TrainingOptions = TrainingOptions()):
    """A plain scikit-learn fit from scratch on a copy of the data (the
    reference that train_and_evaluate's cheaper path is checked against)."""
    return _new_pipeline(options).fit(data.features, data.labels)


DEFAULT_HOLDOUT = 0.2
MIN_ROWS_PER_CLASS_FOR_HOLDOUT = 5


def _blocks(rows: int):
    for start in range(0, rows, BLOCK_ROWS):
        yield slice(start, min(rows, start + BLOCK_ROWS))


def _fitted_scaler(features):
    """A StandardScaler fitted a block at a time: fitting it at once would
    make a temporary as large as the matrix."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for block in _blocks(len(features)):
        scaler.partial_fit(features[block])
    return scaler


def _scale_in_place(features, scaler) -> None:
    for block in _blocks(len(features)):
        scaler.transform(features[block], copy=False)


def _rescale_in_place(features, old, new) -> None:
    """Rows scaled by `old` become rows scaled by `new`:
    (x - m_new) / s_new = x_old * (s_old / s_new) + (m_old - m_new) / s_new."""
    ratio = old.scale_ / new.scale_
    shift = (old.mean_ - new.mean_) / new.scale_
    for block in _blocks(len(features)):
        features[block] *= ratio
        features[block] += shift


def _move_holdout_to_end(features, codes, test_rows: int) -> None:
    """Picks the stratified holdout train_test_split(stratify=..., random_state=0)
    would pick, and swaps its rows to the end of the matrix in place, so the
    two parts are views and the matrix is never copied."""
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit

    n_rows = len(codes)
    train_rows = n_rows - test_rows
    split = StratifiedShuffleSplit(n_splits=1, test_size=test_rows, train_size=train_rows,
                                   random_state=0)
    _, test = next(split.split(codes, codes))
    is_test = np.zeros(n_rows, dtype=bool)
    is_test[test] = True
    del test
    front = np.flatnonzero(is_test[:train_rows])  # held-out rows in the training part
    back = train_rows + np.flatnonzero(~is_test[train_rows:])  # and the other way round
    del is_test
    for block in _blocks(len(front)):
        a, b = front[block], back[block]
        features[a], features[b] = features[b], features[a]  # fancy indexing copies
        codes[a], codes[b] = codes[b], codes[a]


def _score(classifier, features, codes, classes: list) -> dict:
    """The metrics of a classifier fitted on class codes, predicting a block
    of rows at a time (whole-set probabilities would take rows x classes)."""
    import numpy as np
    from sklearn import metrics

    every_class = np.arange(len(classes))
    predicted = np.empty(len(codes), dtype=np.int32)
    loss = 0.0
    for block in _blocks(len(codes)):
        probabilities = classifier.predict_proba(features[block])
        predicted[block] = probabilities.argmax(axis=1)
        loss += metrics.log_loss(codes[block], probabilities, labels=every_class,
                                 normalize=False)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        codes, predicted, labels=every_class, zero_division=0)
    return {
        "accuracy": float(metrics.accuracy_score(codes, predicted)),
        "log_loss": float(loss / len(codes)),
        "macro_f1": float(metrics.f1_score(codes, predicted, labels=every_class,
                                           average="macro", zero_division=0)),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f),
                       "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": {"labels": classes, "rows_are": "true class",
                             "matrix": metrics.confusion_matrix(
                                 codes, predicted, labels=every_class).tolist()},
    }


def train_and_evaluate(data: TrainingData, options: TrainingOptions):
    """Scores the model on a stratified holdout (or, when the data is too small
    for one, on the training set, and says so), then fits the final model on
    every row. A ConvergenceWarning becomes "converged": false.

    To train data near the size of the trainer's memory, it works in place:
    data.features is scaled (and its rows reordered), and no copy of the
    matrix is made. The final fit starts from the holdout model's
    coefficients: the problem is convex, so it reaches the same optimum as a
    fit from scratch (within the solver's tolerance) in a few iterations."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import Pipeline

    started = time.perf_counter()
    features, codes = data.features, data.codes
    smallest = int(np.bincount(codes, minlength=len(data.classes)).min())
    holdout = options.holdout
    if holdout is None:
        holdout = DEFAULT_HOLDOUT if smallest >= MIN_ROWS_PER_CLASS_FOR_HOLDOUT else 0.0
    evaluation: dict = {"evaluated_on": "training set"}
    classifier = _classifier(options, warm_start=True)
    scaler = None
    if holdout > 0:
        test_rows = int(np.ceil(holdout * data.n_rows))
        if smallest >= 2 and len(data.classes) <= test_rows <= data.n_rows - len(data.classes):
            _move_holdout_to_end(features, codes, test_rows)
            train_rows = data.n_rows - test_rows
            scaler = _fitted_scaler(features)
            held_out_scaler = _fitted_scaler(features[:train_rows])
            _scale_in_place(features, held_out_scaler)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier.fit(features[:train_rows], codes[:train_rows])
            evaluation = {"evaluated_on": "holdout", "holdout_rows": test_rows,
                          "holdout_iterations": int(np.max(classifier.n_iter_)),
                          **_score(classifier, features[train_rows:], codes[train_rows:],
                                   data.classes)}
            _rescale_in_place(features, held_out_scaler, scaler)
        else:
            evaluation["holdout_skipped"] = (
                f"a stratified holdout of {holdout:g} needs every class in both parts; "
                f"the smallest class has {smallest} rows")
    if scaler is None:
        scaler = _fitted_scaler(features)
        _scale_in_place(features, scaler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(features, codes)
    if evaluation["evaluated_on"] == "training set":
        evaluation.update(_score(classifier, features, codes, data.classes))
    # Fitted on class codes 0..k-1, which stand for the sorted classes: what
    # predict answers is classes_[code], so the labels come back as they were.
    classifier.set_params(warm_start=False)
    classifier.classes_ = np.asarray(data.classes)
    evaluation.update(
        training_seconds=round(time.perf_counter() - started, 3),
        iterations=int(np.max(classifier.n_iter_)),
        converged=not any(issubclass(w.category, ConvergenceWarning) for w in caught))
    return Pipeline([("scale", scaler), ("classify", classifier)]), evaluation


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
            self._store.put_artifact(message.model_id, PIPELINE_ARTIFACT,
                                     pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL))
            serving = ServingModel.from_pipeline(pipeline, data.feature_names).to_bytes()
            self._store.put_artifact(message.model_id, SERVING_ARTIFACT, serving)
            embedded = ((serving, self._store.sign(message.model_id, SERVING_ARTIFACT, serving))
                        if len(serving) <= EMBED_LIMIT_BYTES else None)
            marked = self._registry.mark_ready(
                message.model_id, data.classes, owner, embedded, metrics,
                (data.n_rows, data.n_features), data.feature_names)
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
            log("training.lease_lost", level=logging.WARNING, **ids)
            return "already done"
        log("training.ready", seconds=round(time.perf_counter() - started, 3),
            n_rows=data.n_rows, **ids)
        return "ready"
