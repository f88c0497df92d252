"""Predictions with numpy alone, from a compact artifact, with a per-container cache.

Training stores the fitted pipeline twice: `model.pkl` (scikit-learn, for
download) and `serving.npz` (the numbers below, loaded without pickle). The
predict path never imports scikit-learn, which would add seconds to every cold
start, and skips its per-call input validation.
"""
from __future__ import annotations

import functools
import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import orjson

from chalicelib.csvdata import CsvError
from chalicelib.storage import SERVING_ARTIFACT, ArtifactStore


class ArtifactMissing(Exception):
    """A ready model's artifact is not in storage: ArtifactMissing(model_id, name)."""


class AnswerTooLarge(Exception):
    """The answer for `rows` rows takes `size` bytes (`exact`), or at least
    that many, over the limit; `fitting` rows per request would fit."""

    def __init__(self, rows: int, size: int, exact: bool, fitting: int):
        super().__init__(rows, size, exact, fitting)
        self.rows, self.size, self.exact, self.fitting = rows, size, exact, fitting


def answer_bytes(encoded: bytes) -> int:
    """What an encoded answer takes in Lambda's proxy response, where the body
    travels as a JSON string: every '"' and '\\' in it is escaped."""
    return len(encoded) + encoded.count(b'"') + encoded.count(b"\\")


# The answer is {"predictions": [label, ...], "prediction_probability": [[p, ...], ...]}.
# orjson writes a probability (a float64 in [0, 1]) in 3 ("0.0") to 23 characters
# ("2.2250738585072014e-308"); 24 allows for a sign. With these bounds the size
# of an answer is known to within a few times before anything is computed.
_SHORTEST_PROBABILITY, _LONGEST_PROBABILITY = 3, 24
_EMPTY_ANSWER = answer_bytes(orjson.dumps({"predictions": [], "prediction_probability": []}))


def encode_answer(answer: dict, limit: int | None = None) -> bytes:
    """The answer as JSON; AnswerTooLarge if it takes more than `limit` bytes."""
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    size = answer_bytes(body)
    if limit is not None and size > limit:
        rows = len(answer["predictions"])
        raise AnswerTooLarge(rows, size, True, int((limit - _EMPTY_ANSWER) / (size / rows)))
    return body


@dataclass(frozen=True)
class ServingModel:
    """StandardScaler + LogisticRegression, as the arrays predict needs."""
    classes: np.ndarray    # (n_classes,) labels with their CSV type
    mean: np.ndarray       # (n_features,)
    scale: np.ndarray      # (n_features,)
    coef: np.ndarray       # (1 or n_classes, n_features)
    intercept: np.ndarray  # (1 or n_classes,)
    feature_names: np.ndarray | None = None  # from the training CSV's header, if it had one

    @property
    def n_features(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_pipeline(cls, pipeline, feature_names: list[str] | None = None) -> "ServingModel":
        scaler, classifier = pipeline[0], pipeline[-1]
        return cls(classes=classifier.classes_, mean=scaler.mean_, scale=scaler.scale_,
                   coef=classifier.coef_, intercept=classifier.intercept_,
                   feature_names=None if feature_names is None else np.array(feature_names))

    def to_bytes(self) -> bytes:
        arrays = {"classes": self.classes, "mean": self.mean, "scale": self.scale,
                  "coef": self.coef, "intercept": self.intercept}
        if self.feature_names is not None:
            arrays["feature_names"] = self.feature_names
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ServingModel":
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            return cls(**{name: arrays[name] for name in arrays.files})

    @functools.cached_property
    def _labels(self) -> np.ndarray:
        """The classes as Python objects: predictions share them rather than
        copying a label per row (numpy's fixed-width strings would make every
        row as long as the longest label)."""
        return np.array(self.classes.tolist(), dtype=object)

    @functools.cached_property
    def _label_bytes(self) -> np.ndarray:
        """What each class's label takes in the answer, with its comma."""
        return np.array([answer_bytes(orjson.dumps(label)) + 1 for label in self._labels],
                        dtype=np.int64)

    @functools.cached_property
    def _row_bytes(self) -> tuple[int, int, int, int]:
        """A row's label, shortest and longest, and its probabilities with
        every number at its shortest and at its longest."""
        n = len(self.classes)
        numbers = [1 + n * length + (n - 1) + 1 + 1  # [p,p,...] and a comma
                   for length in (_SHORTEST_PROBABILITY, _LONGEST_PROBABILITY)]
        return int(self._label_bytes.min()), int(self._label_bytes.max()), *numbers

    def _refusal(self, rows: int, labels: int, label_per_row: float,
                 limit: int) -> AnswerTooLarge | None:
        """AnswerTooLarge if the answer cannot fit in `limit` bytes however
        short its numbers: `labels` is what the rows' labels take (at least).
        The rows that fit assume `label_per_row` and the longest numbers."""
        _, _, shortest_numbers, longest_numbers = self._row_bytes
        # -2: the last label and the last row of probabilities have no comma.
        smallest = _EMPTY_ANSWER + labels + rows * shortest_numbers - 2
        if smallest <= limit:
            return None
        fitting = int((limit - _EMPTY_ANSWER) // (label_per_row + longest_numbers))
        return AnswerTooLarge(rows, smallest, False, fitting)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """The same arithmetic, in the same order, as scikit-learn's predict_proba."""
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (features - self.mean) / self.scale
        if not np.isfinite(scaled).all():
            raise CsvError("the feature values are too large for this model "
                           "(scaling them overflows 64-bit floats)")
        with np.errstate(over="ignore", invalid="ignore"):
            scores = scaled @ self.coef.T + self.intercept
        if not np.isfinite(scores).all():
            raise CsvError("the feature values are too large for this model "
                           "(its class scores overflow 64-bit floats)")
        with np.errstate(over="ignore"):
            if self.coef.shape[0] == 1:  # binary: the logistic function of one score
                positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
                return np.stack([1.0 - positive, positive], axis=1)
            scores -= scores.max(axis=1, keepdims=True)  # softmax, stable
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            return scores

    def predict(self, features: np.ndarray, answer_limit: int | None = None) -> dict:
        """{"predictions", "prediction_probability"}; with `answer_limit`,
        AnswerTooLarge as soon as it is certain that the answer's JSON would
        take more bytes: before predicting (from the number of rows), and again
        before any label is copied into the answer (from the predicted labels)."""
        rows = features.shape[0]
        shortest_label, longest_label, _, longest_numbers = self._row_bytes
        # Most requests are far from the limit: nothing to check then.
        checking = (answer_limit is not None and _EMPTY_ANSWER
                    + rows * (longest_label + longest_numbers) > answer_limit)
        if checking:
            # Before predicting: each row's label at least the shortest; the rows
            # that surely fit are counted with the longest.
            refusal = self._refusal(rows, rows * shortest_label, longest_label, answer_limit)
            if refusal:
                raise refusal
        probabilities = self.predict_proba(features)
        # The most probable class is exactly what LogisticRegression.predict returns.
        winners = probabilities.argmax(axis=1)
        if checking:
            labels = int(self._label_bytes.take(winners).sum())
            refusal = self._refusal(rows, labels, labels / rows, answer_limit)
            if refusal:
                raise refusal
        return {"predictions": self._labels.take(winners).tolist(),
                "prediction_probability": probabilities}


class Predictor:
    """Loaded models, least recently used first out, at most `cache_size`.

    Artifacts never change once a model is ready, so a loaded model is never
    stale; but a warm container must notice that a model was deleted. An
    entry is trusted for `recheck_seconds` after its status was last read;
    after that the caller reads the status again before using it.
    """

    def __init__(self, store: ArtifactStore, cache_size: int, recheck_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._cache_size = cache_size
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._entries: OrderedDict[str, tuple[ServingModel, float]] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, model_id: str) -> ServingModel | None:
        """The cached model if its status was confirmed recently, else None."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None or self._clock() - entry[1] > self._recheck_seconds:
                return None
            self._entries.move_to_end(model_id)
            return entry[0]

    def load(self, model_id: str, embedded: tuple[bytes, str | None] | None = None) -> ServingModel:
        """The model, from the cache, else the status item's embedded copy, else
        S3; the caller has just confirmed it is ready. Signatures are checked."""
        with self._lock:
            entry = self._entries.get(model_id)
        if entry is not None:
            model = entry[0]
        elif embedded is not None:
            blob, signature = embedded
            model = ServingModel.from_bytes(
                self._store.verify(model_id, SERVING_ARTIFACT, blob, signature))
        else:
            blob = self._store.get_artifact(model_id, SERVING_ARTIFACT)
            if blob is None:
                raise ArtifactMissing(model_id, SERVING_ARTIFACT)
            model = ServingModel.from_bytes(blob)
        with self._lock:
            self._entries[model_id] = (model, self._clock())
            self._entries.move_to_end(model_id)
            while len(self._entries) > self._cache_size:
                self._entries.popitem(last=False)
        return model

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._entries.pop(model_id, None)
