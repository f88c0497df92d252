"""What the API does, independent of HTTP: submit, look up, predict."""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass

from chalicelib.config import DEFAULT_MAX_UPLOAD_BYTES
from chalicelib.csvdata import check_feature_text, parse_features, parse_training
from chalicelib.expiry import remove_model
from chalicelib.jsoninput import read_rows
from chalicelib.logs import log
from chalicelib.queue import TrainingMessage, TrainingQueue
from chalicelib.registry import (STATUS_FILTERS, InvalidPageToken, ModelRecord, ModelRegistry,
                                 Status, now_iso)
from chalicelib.serving import ArtifactMissing, Predictor
from chalicelib.storage import (METRICS_ARTIFACT, PIPELINE_ARTIFACT, ArtifactStore,
                                dataset_key, upload_key)
from chalicelib.training import TrainingOptions


class ModelNotFound(Exception):
    pass


class ModelTraining(Exception):
    pass


class ModelFailed(Exception):
    """Training failed; str() is the reason."""


class InvalidRequest(ValueError):
    """A query parameter or token that cannot be used; str() says why (400)."""


MAX_TTL_HOURS = 24 * 365
_UPLOAD_ID = re.compile(r"upload_[0-9a-f]{24}")


@dataclass(frozen=True)
class Submission:
    model_id: str
    task_id: str


def new_model_id() -> str:
    # Readable like the seed's ids, unique thanks to 48 random bits.
    return time.strftime("model_%Y%m%d-%H%M%S", time.gmtime()) + "_" + secrets.token_hex(6)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


class ModelService:
    def __init__(self, registry: ModelRegistry, store: ArtifactStore,
                 queue: TrainingQueue, predictor: Predictor,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, batches=None):
        self._registry = registry
        self._batches = batches  # chalicelib.batches.BatchService: removed with the model
        self._store = store
        self._queue = queue
        self._predictor = predictor
        self._max_upload_bytes = max_upload_bytes

    def submit(self, body: bytes, ttl_hours: float | None = None,
               options: TrainingOptions = TrainingOptions()) -> Submission:
        """Validates the CSV, stores it, registers the model, enqueues training.

        Raises CsvError for bad data (nothing stored). If AWS fails part-way,
        what was written is removed again and the error propagates.
        """
        data = parse_training(body, options.header)
        model_id, task_id = new_model_id(), str(uuid.uuid4())
        key = self._store.put_dataset(model_id, body)
        expires_at = None if ttl_hours is None else int(time.time() + ttl_hours * 3600)
        record = ModelRecord(model_id=model_id, task_id=task_id, status=Status.SUBMITTING,
                             created_at=now_iso(), n_rows=data.n_rows,
                             n_features=data.n_features, dataset_key=key,
                             expires_at=expires_at, options=options.to_json(),
                             feature_names=data.feature_names)
        self._register_and_enqueue(record)
        log("submit.queued", model_id=model_id, task_id=task_id, n_rows=data.n_rows)
        return Submission(model_id, task_id)

    def new_upload(self, expires_in: int = 3600) -> dict:
        """Where to POST a dataset too large to post to the API (a form: the
        fields, then the file last); train it with submit_upload."""
        upload_id = "upload_" + secrets.token_hex(12)
        form = self._store.upload_form(upload_id, expires_in, self._max_upload_bytes)
        return {"upload_id": upload_id, "method": "POST", "url": form["url"],
                "fields": form["fields"], "max_bytes": self._max_upload_bytes,
                "expires_in": expires_in}

    def submit_upload(self, upload_id: str, ttl_hours: float | None = None,
                      options: TrainingOptions = TrainingOptions()) -> Submission:
        """Trains on an uploaded dataset. It is read and checked by the trainer
        (it may be far larger than a request): problems end in "Training Failed"."""
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise InvalidRequest("upload_id is not one POST /uploads handed out")
        # Claimed first, so the lifecycle rule for abandoned uploads never takes
        # a model's dataset. A missing upload is the trainer's to report.
        self._store.claim_upload(upload_id)
        model_id, task_id = new_model_id(), str(uuid.uuid4())
        expires_at = None if ttl_hours is None else int(time.time() + ttl_hours * 3600)
        self._register_and_enqueue(ModelRecord(
            model_id=model_id, task_id=task_id, status=Status.SUBMITTING, created_at=now_iso(),
            n_rows=None, n_features=None, dataset_key=upload_key(upload_id),
            expires_at=expires_at, options=options.to_json()))
        log("submit.queued", model_id=model_id, task_id=task_id, upload_id=upload_id)
        return Submission(model_id, task_id)

    def _register_and_enqueue(self, record: ModelRecord) -> None:
        try:
            if not self._registry.create(record):
                raise RuntimeError(f"model id {record.model_id} is already taken")
            self._queue.send(TrainingMessage(record.model_id, record.dataset_key, record.task_id))
        except Exception:
            self._undo_submission(record)
            raise
        try:
            self._registry.mark_queued(record.model_id)
        except Exception as error:
            # The message is on its way; the trainer moves the status along.
            log("submit.mark_queued_failed", level=logging.WARNING, model_id=record.model_id,
                task_id=record.task_id, error=str(error))

    def _undo_submission(self, record: ModelRecord) -> None:
        # Best effort: an item left behind stays SUBMITTING, which clients never see.
        # An upload stays: the client may submit it again.
        with contextlib.suppress(Exception):
            self._registry.delete(record.model_id)
        if record.dataset_key == dataset_key(record.model_id):
            with contextlib.suppress(Exception):
                self._store.delete_dataset(record.dataset_key)

    def page(self, limit: int = 20, token: str | None = None,
             status: str | None = None) -> dict:
        """{"models": [facts, newest first], "next": token or None}."""
        if status is not None and status not in STATUS_FILTERS:
            raise InvalidRequest(f"status must be one of {', '.join(STATUS_FILTERS)}, "
                                 f"not {status!r}")
        try:
            records, after = self._registry.page(limit, token, STATUS_FILTERS.get(status))
        except InvalidPageToken:
            raise InvalidRequest("next must be the previous page's next, a creation time "
                                 "and a model id (2026-12-02T11:35:00Z.model_20261202-113500_"
                                 "0123456789ab), not " + _shown(token) + "; start again "
                                 "without it") from None
        return {"models": [r.public() for r in records], "next": after}

    def delete(self, model_id: str) -> None:
        """Removes the status item, the dataset and the artifacts. The model is
        hidden first, so a DELETE cut short leaves nothing visible, and
        repeating it finishes the job. An expired model whose item is still
        there is removed too (the sweep would do it later). Warm containers
        elsewhere may answer from their cache until they next read its status
        (MODEL_RECHECK_SECONDS)."""
        record = self._registry.get(model_id, include_deleting=True, include_expired=True)
        if record is None:
            raise ModelNotFound(model_id)
        remove_model(self._registry, self._store, model_id, record.dataset_key,
                     batches=self._batches)
        self._predictor.forget(model_id)
        log("model.deleted", model_id=model_id, task_id=record.task_id)

    def download(self, model_id: str, expires_in: int = 3600) -> dict:
        """Where to fetch the model's scikit-learn pipeline, for a ready model,
        and the SHA-256 to check the download against (no secret needed)."""
        record = self._ready_record(model_id)
        # Items written before the digest was stored: from the signed artifact.
        sha256 = (record.pipeline_sha256
                  or self._store.artifact_sha256(model_id, PIPELINE_ARTIFACT))
        if sha256 is None:
            raise ArtifactMissing(model_id, PIPELINE_ARTIFACT)
        answer = {
            "model_id": model_id,
            "url": self._store.artifact_url(model_id, PIPELINE_ARTIFACT, expires_in),
            "expires_in": expires_in,
            "format": "pickle of a scikit-learn Pipeline (StandardScaler, LogisticRegression)",
            "scikit_learn_version": importlib.metadata.version("scikit-learn"),
            "sha256": sha256,
            "classes": record.classes,
        }
        if record.metrics is not None and "per_class_metrics" in record.metrics:
            # Too large for the status item: the whole metrics are in S3.
            answer["metrics_url"] = self._store.artifact_url(model_id, METRICS_ARTIFACT, expires_in)
        return answer

    def _ready_record(self, model_id: str) -> ModelRecord:
        record = self.record(model_id)
        self._check_ready(record)
        return record

    @staticmethod
    def _check_ready(record: ModelRecord) -> None:
        if record.status == Status.FAILED:
            raise ModelFailed(record.error or "unknown error")
        if record.status != Status.READY:
            raise ModelTraining(record.model_id)

    def record(self, model_id: str) -> ModelRecord:
        record = self._registry.get(model_id)
        if record is None or not record.visible:
            raise ModelNotFound(model_id)
        return record

    def predict(self, model_id: str, body: bytes, as_json: bool = False,
                answer_limit: int | None = None) -> dict:
        """{"predictions": labels, "prediction_probability": array}; a warm
        container answers from its cache without calling AWS. With
        `answer_limit`, AnswerTooLarge before predicting when the answer's JSON
        cannot fit in that many bytes. A body that is malformed whatever the
        model (not the shape the OpenAPI document gives) is refused (CsvError)
        once the model is known to exist, before its state is looked at: a
        training model answers "Model is Training" to well-formed bodies only."""
        model = self._predictor.fresh(model_id)
        record = None
        if model is None:
            try:
                record = self.record(model_id)
            except ModelNotFound:
                self._predictor.forget(model_id)
                raise
        rows = read_rows(body) if as_json else check_feature_text(body)
        if model is None:
            self._check_ready(record)
            embedded = None if record.serving is None else (record.serving, record.serving_hmac)
            model = self._predictor.load(model_id, embedded)
        if as_json:
            names = None if model.feature_names is None else model.feature_names.tolist()
            return model.predict(rows.matrix(model.n_features, names), answer_limit)
        return model.predict(parse_features(body, model.n_features), answer_limit)
