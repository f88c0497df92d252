"""Predictions with numpy alone, from a compact artifact, with a per-container cache.

Training stores the fitted pipeline twice: `model.pkl` (scikit-learn, for
download) and `serving.npz` (the numbers below, loaded without pickle). The
predict path never imports scikit-learn, which would add seconds to every cold
start, and skips its per-call input validation.
"""
from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from chalicelib.csvdata import CsvError
from chalicelib.storage import SERVING_ARTIFACT, ArtifactStore


class ArtifactMissing(Exception):
    """A ready model's artifact is not in storage: ArtifactMissing(model_id, name)."""


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

    def predict(self, features: np.ndarray) -> dict:
        probabilities = self.predict_proba(features)
        # The most probable class is exactly what LogisticRegression.predict returns.
        return {"predictions": self.classes.take(probabilities.argmax(axis=1)).tolist(),
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
