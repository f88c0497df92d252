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

from chalicelib.csvdata import (BLOCK_ROWS, CsvError, DatasetTooLarge, TrainingData,
                                parse_training)
from chalicelib.logs import log
from chalicelib.queue import TrainingMessage
from chalicelib.registry import ModelRegistry, Status
from chalicelib.serving import ServingModel
from chalicelib.storage import (METRICS_ARTIFACT, PIPELINE_ARTIFACT, SERVING_ARTIFACT,
                                ArtifactStore, upload_id_of)


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
    """Picks a stratified holdout of test_rows rows (each class's share as
    scikit-learn's StratifiedShuffleSplit gives it, the rows at random with a
    fixed seed) and swaps its rows to the end of the matrix in place, so the
    two parts are views and the matrix is never copied. StratifiedShuffleSplit
    itself would keep about 60 bytes a row of index arrays at once, more than
    the matrix of narrow data."""
    import numpy as np
    from sklearn.utils.extmath import _approximate_mode

    rng = np.random.default_rng(0)
    n_rows = len(codes)
    train_rows = n_rows - test_rows
    counts = np.bincount(codes)
    per_class = _approximate_mode(counts, test_rows, np.random.RandomState(0))
    is_test = np.zeros(n_rows, dtype=bool)
    for code in np.flatnonzero(per_class):
        rows = np.flatnonzero(codes == code)
        is_test[rng.choice(rows, size=int(per_class[code]), replace=False)] = True
        del rows
    front = np.flatnonzero(is_test[:train_rows])  # held-out rows in the training part
    back = train_rows + np.flatnonzero(~is_test[train_rows:])  # and the other way round
    del is_test
    for block in _blocks(len(front)):
        a, b = front[block], back[block]
        features[a], features[b] = features[b], features[a]  # fancy indexing copies
        codes[a], codes[b] = codes[b], codes[a]


def _fit(classifier, features, codes, n_classes: int) -> None:
    """classifier.fit(features, codes) for lbfgs, the same objective, solver
    and settings as scikit-learn's LogisticRegression, with the loss and its
    gradient summed a block of rows at a time. scikit-learn's own fit keeps
    several arrays of rows x classes while it solves (its scores, their
    gradient, the loss, the encoded labels, sample weights: 85 bytes a row for
    3 classes, more than the matrix of 4 features); this keeps none, so data
    near the size of the trainer's memory still trains. scikit-learn's loss
    kernels (its LinearModelLoss) do the arithmetic, and scipy's L-BFGS-B the
    solving; warm_start starts from the classifier's coefficients."""
    import warnings

    import numpy as np
    from scipy import optimize
    from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model._linear_loss import LinearModelLoss
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    n_rows, n_features = features.shape
    binary = n_classes == 2
    intercept = classifier.fit_intercept
    dof = n_features + int(intercept)
    counts = np.bincount(codes, minlength=n_classes)
    # class_weight="balanced" is scikit-learn's n / (classes x count) per class.
    weights_of_class = (None if classifier.class_weight is None
                        else n_rows / (n_classes * counts.astype(np.float64)))
    weight_sum = float(n_rows if weights_of_class is None else weights_of_class @ counts)
    l2 = 1.0 / (classifier.C * weight_sum)  # as scikit-learn scales its penalty
    loss = LinearModelLoss(HalfBinomialLoss() if binary else HalfMultinomialLoss(n_classes=n_classes),
                           fit_intercept=intercept)
    threads = _openmp_effective_n_threads()

    def objective(w):
        total, gradient = 0.0, np.zeros_like(w)
        for block in _blocks(n_rows):
            y = codes[block].astype(np.float64)  # binary: 0/1, the second class positive
            weight = None if weights_of_class is None else weights_of_class[codes[block]]
            part, part_gradient = loss.loss_gradient(w, features[block], y, weight, 0.0, threads)
            # Each block's figures are averages over its own weight.
            share = (len(y) if weight is None else float(weight.sum())) / weight_sum
            total += part * share
            gradient += part_gradient * share
        coefficients, _ = loss.weight_intercept(w)  # the penalty spares the intercept
        total += 0.5 * l2 * float(np.sum(coefficients * coefficients))
        if binary:
            gradient[:n_features] += l2 * coefficients
        else:  # the classes of one feature are contiguous (scikit-learn's layout)
            gradient.reshape((n_classes, dof), order="F")[:, :n_features] += l2 * coefficients
        return total, gradient

    start = np.zeros(dof if binary else n_classes * dof)
    if classifier.warm_start and hasattr(classifier, "coef_"):
        previous = np.hstack([classifier.coef_, classifier.intercept_[:, None]])[:, :dof]
        start = previous[0].copy() if binary else previous.ravel(order="F")
    result = optimize.minimize(objective, start, method="L-BFGS-B", jac=True, options={
        "maxiter": classifier.max_iter, "maxls": 50, "gtol": classifier.tol,
        "ftol": 64 * np.finfo(float).eps})
    if result.status != 0:
        warnings.warn(f"lbfgs failed to converge after {result.nit} iterations "
                      f"({result.message}); increase max_iter", ConvergenceWarning)
    solution = result.x.reshape((1, dof)) if binary else result.x.reshape(
        (n_classes, dof), order="F")
    classifier.coef_ = np.ascontiguousarray(solution[:, :n_features])
    classifier.intercept_ = (solution[:, n_features].copy() if intercept
                             else np.zeros(solution.shape[0]))
    classifier.n_iter_ = np.array([min(result.nit, classifier.max_iter)], dtype=np.int32)
    classifier.classes_ = np.arange(n_classes)
    classifier.n_features_in_ = n_features


def _score(classifier, features, codes, classes: list) -> dict:
    """The metrics of a classifier fitted on class codes, predicting a block
    of rows at a time (whole-set probabilities would take rows x classes).
    Every figure comes from the confusion matrix and the true class's
    probability, as scikit-learn.metrics defines them (zero_division=0);
    calling those functions would cost more than fitting iris, mostly in
    checking their inputs (tests/test_training.py compares the two)."""
    import numpy as np

    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    eps = np.finfo(np.float64).eps
    loss = 0.0
    for block in _blocks(len(codes)):
        probabilities = classifier.predict_proba(features[block])
        truth = codes[block]
        predicted = probabilities.argmax(axis=1)
        confusion += np.bincount(truth * n_classes + predicted,
                                 minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        true_probability = probabilities[np.arange(len(truth)), truth]
        loss -= float(np.log(np.clip(true_probability, eps, 1 - eps)).sum())
    right = np.diag(confusion).astype(np.float64)
    support, predicted_as = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_as > 0, right / predicted_as, 0.0)
        recall = np.where(support > 0, right / support, 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(right.sum() / len(codes)),
        "log_loss": loss / len(codes),
        "macro_f1": float(f1.mean()),
        "per_class": [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f),
                       "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, support)],
        "confusion_matrix": {"labels": classes, "rows_are": "true class",
                             "matrix": confusion.tolist()},
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
                _fit(classifier, features[:train_rows], codes[:train_rows],
                     len(data.classes))
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
        _fit(classifier, features, codes, len(data.classes))
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
# Metrics larger than this (per-class figures and the confusion matrix grow
# with the classes, and 600 classes passed DynamoDB's 400 KB) go to S3 whole;
# the item keeps the overall figures.
METRICS_ITEM_LIMIT_BYTES = 64 * 1024
_PER_CLASS_METRICS = ("per_class", "confusion_matrix")


@dataclass(frozen=True)
class MemoryBudget:
    """What the trainer's memory can train, checked before each step that
    could exceed it, so a dataset too large ends in "Training Failed" with its
    size rather than in an out-of-memory crash, retried until the dead-letter
    queue.

    Training keeps the float64 matrix and a 4-byte class code per row; the
    holdout's choice needs a few more bytes a row for a moment, and the fit,
    the scaler and the scoring work a block of rows at a time (measured by
    bench/training.py: the peak is near the matrix and the codes)."""
    memory_mb: int = 3008
    max_dataset_bytes_setting: int | None = None
    # The process itself (Python, numpy, scipy, scikit-learn, botocore: about
    # 150 MB here) and room for slack.
    reserved_mb: int = 400

    @property
    def bytes(self) -> int:
        return max(0, self.memory_mb - self.reserved_mb) * 2**20

    @property
    def max_dataset_bytes(self) -> int:
        """Larger CSVs are refused before they are read. A narrow CSV of short
        numbers can need more memory than its size (a value takes 8 bytes in
        the matrix): it stops while being read, at max_rows."""
        if self.max_dataset_bytes_setting is not None:
            return self.max_dataset_bytes_setting
        return self.bytes

    @staticmethod
    def bytes_per_row(n_features: int) -> int:
        # The matrix, the class code, and the holdout's row indices for a moment.
        return 8 * n_features + 4 + 16

    @staticmethod
    def fixed_bytes(n_features: int, n_classes: int) -> int:
        classes = max(2, n_classes)
        pieces = 64 * 2**20  # a piece of CSV being parsed, and numpy's reading of it
        blocks = BLOCK_ROWS * 8 * (n_features + 4 * classes + 4)  # one block's scores
        solver = 8 * 25 * classes * (n_features + 1)  # lbfgs's past steps
        return pieces + blocks + solver + 16 * classes * classes  # and the confusion matrix

    def fit_bytes(self, n_rows: int, n_features: int, n_classes: int) -> int:
        return n_rows * self.bytes_per_row(n_features) + self.fixed_bytes(n_features, n_classes)

    def max_rows(self, width: int) -> int:
        """Rows of `width` CSV columns (features and the label) past which even
        two classes cannot train."""
        return max(0, self.bytes - self.fixed_bytes(width - 1, 2)) // self.bytes_per_row(width - 1)

    def check_fit(self, data: TrainingData) -> None:
        needed = self.fit_bytes(data.n_rows, data.n_features, len(data.classes))
        if needed > self.bytes:
            raise DatasetTooLarge(
                f"{data.n_rows:,} rows x {data.n_features} features and {len(data.classes)} "
                f"classes need about {needed / 2**20:,.0f} MB to train; the trainer has "
                f"{self.bytes / 2**20:,.0f} MB for data ({self.memory_mb:,} MB in all)")


class TrainingInProgress(Exception):
    """Another delivery of the same message holds the model; retry later."""


# Failures that a retry would only repeat: the message is not sent round
# again (three times, then to the dead-letter queue); the model fails at once.
_PERMANENT_AWS_ERRORS = {"ValidationException", "ItemCollectionSizeLimitExceededException",
                         "EntityTooLarge", "InvalidArgument"}


def _permanent(error: Exception) -> bool:
    if isinstance(error, MemoryError):
        return True
    return (isinstance(error, ClientError)
            and error.response.get("Error", {}).get("Code") in _PERMANENT_AWS_ERRORS)


def _split_metrics(metrics: dict) -> tuple[dict, bytes | None]:
    """(what the status item keeps, the whole metrics as JSON when too large for it)."""
    whole = json.dumps(metrics).encode()
    if len(whole) <= METRICS_ITEM_LIMIT_BYTES:
        return metrics, None
    kept = {name: value for name, value in metrics.items() if name not in _PER_CLASS_METRICS}
    kept["per_class_metrics"] = (
        f"per_class and confusion_matrix for {len(metrics.get('per_class', []))} classes "
        f"take {len(whole):,} bytes, too many for the status: they are in the model's "
        "metrics.json (metrics_url in GET /models/{model_id}/artifact)")
    return kept, whole


class Trainer:
    def __init__(self, registry: ModelRegistry, store: ArtifactStore, max_receives: int,
                 lease_seconds: float, budget: MemoryBudget = MemoryBudget()):
        self._registry = registry
        self._store = store
        self._max_receives = max_receives
        self._lease_seconds = lease_seconds
        self._budget = budget

    def _read(self, key: str, header: bool) -> TrainingData:
        """Streams the dataset from S3 into the matrix, after checking its size."""
        try:
            stream, size = self._store.open_dataset(key)
        except ClientError as error:
            # A missing upload is the client's doing (never sent, or sent too
            # late); a missing dataset of ours is worth retrying. The key is
            # not shown: whoever can list models would learn the upload's name.
            upload_id = upload_id_of(key)
            if upload_id is not None and error.response["Error"]["Code"] == "NoSuchKey":
                raise CsvError(f"the upload {upload_id} was never sent or has expired: send "
                               "the CSV with the upload's form before it expires, then train "
                               "it") from None
            raise
        with contextlib.closing(stream):
            limit = self._budget.max_dataset_bytes
            if size > limit:
                raise DatasetTooLarge(
                    f"the dataset is {size / 1e6:,.1f} MB; the trainer reads at most "
                    f"{limit / 1e6:,.1f} MB ({self._budget.memory_mb:,} MB of memory)")
            return parse_training(stream, header, size=size, max_rows=self._budget.max_rows)

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

        Errors in the data, and failures that would only happen again, mark
        the model failed and return. Anything else (AWS trouble, a crash)
        propagates so SQS delivers the message again; on the last receive
        before the dead-letter queue the model is marked failed.
        """
        ids = {"model_id": message.model_id, "task_id": message.task_id}
        owner = uuid.uuid4().hex
        # One conditional write takes the lease and returns the item (or, if
        # refused, the item as it was): no read before it.
        taken, record = self._registry.try_start_training(
            message.model_id, owner, self._lease_seconds, receive_count)
        if not taken:
            if record is None or not record.visible:
                log("training.skipped", reason="no such model", **ids)
                return "unknown model"
            if record.status in (Status.READY, Status.FAILED):
                log("training.skipped", reason=f"model is already {record.status}", **ids)
                return "already done"
            # Held by a live trainer. If it dies, this message comes back after
            # its visibility timeout and takes over once the lease has run out.
            log("training.deferred", reason="another delivery holds the lease", **ids)
            raise TrainingInProgress(message.model_id)
        log("training.started", receive_count=receive_count, **ids)
        started = time.perf_counter()
        shape = None
        try:
            options = TrainingOptions.from_json(record.options)
            data = self._read(message.dataset_key, options.header)
            shape = (data.n_rows, data.n_features)
            self._budget.check_fit(data)
            classes, feature_names = data.classes, data.feature_names
            pipeline, metrics = train_and_evaluate(data, options)
            del data  # the matrix: the artifacts need only the model
            # The artifacts before READY: a reader never sees a ready model without them.
            pipeline_sha256 = self._store.put_artifact(
                message.model_id, PIPELINE_ARTIFACT,
                pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL))
            serving = ServingModel.from_pipeline(pipeline, feature_names).to_bytes()
            self._store.put_artifact(message.model_id, SERVING_ARTIFACT, serving)
            metrics, whole_metrics = _split_metrics(metrics)
            if whole_metrics is not None:
                self._store.put_artifact(message.model_id, METRICS_ARTIFACT, whole_metrics)
            embedded = ((serving, self._store.sign(message.model_id, SERVING_ARTIFACT, serving))
                        if len(serving) <= EMBED_LIMIT_BYTES else None)
            marked = self._registry.mark_ready(
                message.model_id, classes, owner, embedded, metrics, shape, feature_names,
                pipeline_sha256)
        except (CsvError, ValueError) as error:
            self._registry.mark_failed(message.model_id, str(error), owner)
            log("training.failed", level=logging.WARNING, error=str(error), **ids)
            return "failed"
        except Exception as error:
            if _permanent(error):
                reason = self._permanent_reason(error, shape)
                self._registry.mark_failed(message.model_id, reason, owner)
                log("training.failed", level=logging.ERROR, error=reason, **ids)
                return "failed"
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
            n_rows=shape[0], **ids)
        return "ready"

    def _permanent_reason(self, error: Exception, shape: tuple[int, int] | None) -> str:
        if isinstance(error, MemoryError):
            data = ("" if shape is None
                    else f" on {shape[0]:,} rows x {shape[1]} features")
            return (f"training ran out of memory{data}; the trainer has "
                    f"{self._budget.memory_mb:,} MB (not retried: it would run out again)")
        return (f"training failed and would fail again, so it was not retried: "
                f"{type(error).__name__}: {error}")
