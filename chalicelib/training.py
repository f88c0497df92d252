"""The trainer: turns a training message into a pickled scikit-learn pipeline.

scikit-learn is imported lazily: importing it costs seconds, and only the
trainer (and unpickling a model) needs it.
"""
from __future__ import annotations

import contextlib
import logging
import pickle
import time
import uuid

from chalicelib.csvdata import CsvError, TrainingData, parse_training
from chalicelib.logs import log
from chalicelib.queue import TrainingMessage
from chalicelib.registry import ModelRegistry, Status
from chalicelib.serving import ServingModel
from chalicelib.storage import PIPELINE_ARTIFACT, SERVING_ARTIFACT, ArtifactStore


def fit_pipeline(data: TrainingData):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is fitted here and stored with the model, so predictions are
    # scaled with the training statistics (the seed re-scaled every predict
    # batch on its own statistics, which made single-row answers meaningless).
    pipeline = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=1000))])
    pipeline.fit(data.features, np.asarray(data.labels))
    return pipeline


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
            data = parse_training(self._store.get_dataset(message.dataset_key))
            pipeline = fit_pipeline(data)
            # Both artifacts before READY: a reader never sees a ready model without them.
            self._store.put_artifact(message.model_id, PIPELINE_ARTIFACT,
                                     pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL))
            serving = ServingModel.from_pipeline(pipeline).to_bytes()
            self._store.put_artifact(message.model_id, SERVING_ARTIFACT, serving)
            embedded = ((serving, self._store.sign(message.model_id, SERVING_ARTIFACT, serving))
                        if len(serving) <= EMBED_LIMIT_BYTES else None)
            marked = self._registry.mark_ready(message.model_id, data.classes, owner, embedded)
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
