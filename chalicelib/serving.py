"""Predictions from stored models, with a per-container cache.

Artifacts are immutable once a model is ready, so a cached model never goes
stale; the cache is bounded by count (MODEL_CACHE_SIZE).
"""
from __future__ import annotations

import functools
import pickle

import numpy as np

from chalicelib.csvdata import CsvError
from chalicelib.storage import ArtifactStore


class ArtifactMissing(Exception):
    pass


class Predictor:
    def __init__(self, store: ArtifactStore, cache_size: int):
        self._store = store
        self._model = functools.lru_cache(maxsize=cache_size)(self._load)

    def _load(self, model_id: str):
        blob = self._store.get_model(model_id)
        if blob is None:
            raise ArtifactMissing(model_id)
        return pickle.loads(blob)

    def predict(self, model_id: str, features: np.ndarray) -> dict:
        model = self._model(model_id)
        try:
            probabilities = model.predict_proba(features)
        except ValueError:
            # Finite inputs that overflow once scaled with the training statistics.
            raise CsvError("the feature values are too large for this model "
                           "(scaling them overflows 64-bit floats)") from None
        # For logistic regression the class with the highest probability is
        # exactly what predict() returns; computing it here saves a second pass.
        predictions = model.classes_.take(probabilities.argmax(axis=1))
        return {
            "predictions": predictions.tolist(),
            "prediction_probability": probabilities.tolist(),
        }
