"""Batch predictions: a CSV of any size in S3, its predictions written next to it.

POST /models/{model_id}/batches stores (or claims) the input, puts an item in
the batches table and a message on the batch queue. app.py's `run_batch`
(SQS-triggered, 512 MB, 900 s) streams the input a piece at a time
(csvdata.stream_features), predicts each piece with the serving arrays and
writes `row,label,<one column per class>` lines, in input order, to S3 with a
multipart upload.

The item is the source of truth. A run holds a lease on it (owner, expiry,
taken with one conditional write), and after each part it records, with a
write conditional on that lease and on the parts it knows of: the part's
ETag, the input's byte offset and line number after it, and rows_done. A
redelivered message (the run died) takes the lease once it has run out and
resumes after the last recorded part: a part uploaded but not recorded is
uploaded again under the same number, with the same bytes, so the output is
never duplicated nor corrupted. A run close to its timeout records where it
is, gives the lease up and sends a continuation message.
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable

import numpy as np
import orjson
from botocore.exceptions import ClientError

from chalicelib.csvdata import CsvError, stream_features
from chalicelib.logs import log
from chalicelib.registry import ModelRegistry, Status, now_iso
from chalicelib.serving import Predictor, ServingModel
from chalicelib.storage import (BATCH_RETENTION_DAYS, ArtifactStore, batch_result_key,
                                upload_key)

BY_MODEL_INDEX = "by_model"
# S3 takes parts of at least 5 MiB (all but the last), at most 10,000 of them;
# the item lists every part's ETag (about 40 bytes each, within its 400 KB).
MIN_PART_BYTES = 8 * 2**20
MAX_PARTS = 2_000
# The input's bytes give an estimate of the results' (a row of 4 short numbers
# becomes its number, a label and the probabilities): parts grow with the
# input so that there are never more than MAX_PARTS.
RESULT_BYTES_PER_INPUT_BYTE = 4
# A run hands off to a continuation message when less than this is left of its
# time (one part takes a few seconds; a part of a 300 MB input, about 2).
HANDOFF_SECONDS = 60.0
RESULT_URL_SECONDS = 3600
_BATCH_ID = "batch_"


class BatchStatus(StrEnum):
    QUEUED = "Queued"
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"


class BatchNotFound(Exception):
    pass


class ModelCannotServe(Exception):
    """The batch's model was deleted, expired or is not ready; str() says which."""


def new_batch_id() -> str:
    return _BATCH_ID + secrets.token_hex(12)


def is_batch_id(text: str) -> bool:
    return (len(text) == len(_BATCH_ID) + 24 and text.startswith(_BATCH_ID)
            and all(c in "0123456789abcdef" for c in text[len(_BATCH_ID):]))


@dataclass(frozen=True)
class BatchMessage:
    batch_id: str
    model_id: str

    def to_json(self) -> str:
        return orjson.dumps({"batch_id": self.batch_id, "model_id": self.model_id}).decode()

    @classmethod
    def from_json(cls, body: str) -> "BatchMessage":
        data = orjson.loads(body)
        return cls(batch_id=data["batch_id"], model_id=data["model_id"])


class BatchQueue:
    def __init__(self, sqs, queue_name: str):
        self._sqs = sqs
        self._queue_name = queue_name
        self._url: str | None = None

    def send(self, message: BatchMessage) -> str:
        if self._url is None:
            self._url = self._sqs.get_queue_url(QueueName=self._queue_name)["QueueUrl"]
        return self._sqs.send_message(QueueUrl=self._url,
                                      MessageBody=message.to_json())["MessageId"]


@dataclass
class Batch:
    batch_id: str
    model_id: str
    status: BatchStatus
    created_at: str
    input_key: str
    input_owned: bool  # posted to the API (ours to delete), not an upload
    input_bytes: int | None = None
    offset: int = 0
    next_line: int = 1
    rows_done: int = 0
    rows: int | None = None
    etags: tuple[str, ...] = ()
    multipart_id: str | None = None
    error: str | None = None
    updated_at: str | None = None
    expires_at: int | None = None

    @property
    def result_key(self) -> str:
        return batch_result_key(self.batch_id)

    def public(self) -> dict:
        facts = {"batch_id": self.batch_id, "model_id": self.model_id,
                 "status": str(self.status), "rows_done": self.rows_done, "rows": self.rows,
                 "input_bytes": self.input_bytes, "bytes_done": self.offset,
                 "created_at": self.created_at, "updated_at": self.updated_at}
        if self.error is not None:
            facts["error"] = self.error
        if self.expires_at is not None:
            facts["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(self.expires_at))
        return facts


def _conditional_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


def _value(attribute: dict):
    (kind, value), = attribute.items()
    if kind == "N":
        return int(value) if value.lstrip("-").isdigit() else float(value)
    if kind == "L":
        return tuple(_value(item) for item in value)
    return value


class BatchTable:
    """The batches table: one item per batch (its status, progress, checkpoint, lease)."""

    def __init__(self, dynamodb, table: str, max_receives: int = 3):
        self._client = dynamodb
        self._table = table
        self._max_receives = max_receives

    def create(self, batch: Batch) -> None:
        item = {"batch_id": {"S": batch.batch_id}, "model_id": {"S": batch.model_id},
                "status": {"S": str(batch.status)}, "created_at": {"S": batch.created_at},
                "updated_at": {"S": batch.created_at}, "input_key": {"S": batch.input_key},
                "input_owned": {"BOOL": batch.input_owned}, "offset": {"N": "0"},
                "next_line": {"N": "1"}, "rows_done": {"N": "0"}, "etags": {"L": []},
                "expires_at": {"N": str(batch.expires_at)}}
        if batch.input_bytes is not None:
            item["input_bytes"] = {"N": str(batch.input_bytes)}
        self._client.put_item(TableName=self._table, Item=item,
                              ConditionExpression="attribute_not_exists(batch_id)")

    def get(self, batch_id: str) -> Batch | None:
        answer = self._client.get_item(TableName=self._table, ConsistentRead=True,
                                       Key={"batch_id": {"S": batch_id}})
        return None if "Item" not in answer else self._batch(answer["Item"])

    def _batch(self, attributes: dict) -> Batch:
        item = {name: _value(value) for name, value in attributes.items()}
        status, error = BatchStatus(item["status"]), item.get("error")
        # A run that died on its last delivery says nothing: its message is in
        # the dead-letter queue and its lease has run out.
        if (status == BatchStatus.RUNNING and item.get("attempts", 0) >= self._max_receives
                and item.get("lease_expires", 0) < time.time()):
            status = BatchStatus.FAILED
            why = (f": on the last one the function {item['lost_reason']}"
                   if item.get("lost_attempt") == item["attempts"] else
                   " (the function was killed, ran out of memory or timed out)")
            error = (f"the batch did not finish in {item['attempts']} deliveries{why}; its "
                     "message is in the dead-letter queue")
        return Batch(batch_id=item["batch_id"], model_id=item["model_id"], status=status,
                     created_at=item["created_at"], updated_at=item.get("updated_at"),
                     input_key=item["input_key"], input_owned=item.get("input_owned", False),
                     input_bytes=item.get("input_bytes"), offset=item.get("offset", 0),
                     next_line=item.get("next_line", 1), rows_done=item.get("rows_done", 0),
                     rows=item.get("rows"), etags=item.get("etags", ()),
                     multipart_id=item.get("multipart_id"), error=error,
                     expires_at=item.get("expires_at"))

    def _update(self, batch_id: str, update: str, condition: str, values: dict,
                **call) -> dict | None:
        """The item after the update, or None when the condition failed."""
        values = {**values, ":updated_at": {"S": now_iso()}}
        names = {name: name[1:] for name in ("#status", "#offset", "#rows", "#error")
                 if name in update or name in condition}
        try:
            return self._client.update_item(
                TableName=self._table, Key={"batch_id": {"S": batch_id}},
                UpdateExpression=update + ", updated_at = :updated_at",
                ConditionExpression=condition, ExpressionAttributeNames=names,
                ExpressionAttributeValues=values, ReturnValues="ALL_NEW", **call)
        except ClientError as error:
            if _conditional_failed(error):
                return None
            raise

    def take(self, batch_id: str, owner: str, lease_seconds: float,
             receive_count: int) -> tuple[bool, Batch | None]:
        """Takes the lease of a queued batch, or of a running one whose last
        run's lease has run out: (True, the batch) or (False, the batch as it
        was, None if there is none)."""
        now = time.time()
        try:
            answer = self._client.update_item(
                TableName=self._table, Key={"batch_id": {"S": batch_id}},
                UpdateExpression="SET #status = :running, lease_owner = :owner, "
                                 "lease_expires = :expires, attempts = :attempt, "
                                 "updated_at = :updated_at",
                # A run that died on the last allowed delivery leaves the batch
                # failed (see _batch): a later delivery must not take it over.
                ConditionExpression="#status = :queued OR (#status = :running AND "
                                    "lease_expires < :now AND attempts < :max_receives)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":running": {"S": str(BatchStatus.RUNNING)},
                    ":queued": {"S": str(BatchStatus.QUEUED)},
                    ":owner": {"S": owner}, ":expires": {"N": f"{now + lease_seconds:.3f}"},
                    ":attempt": {"N": str(receive_count)}, ":now": {"N": f"{now:.3f}"},
                    ":max_receives": {"N": str(self._max_receives)},
                    ":updated_at": {"S": now_iso()}},
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as error:
            if not _conditional_failed(error):
                raise
            item = error.response.get("Item")
            return False, None if item is None else self._batch(item)
        return True, self._batch(answer["Attributes"])

    _HELD = "#status = :running AND lease_owner = :owner"

    def _held(self, owner: str) -> dict:
        return {":running": {"S": str(BatchStatus.RUNNING)}, ":owner": {"S": owner}}

    def set_input(self, batch_id: str, owner: str, input_bytes: int, multipart_id: str) -> bool:
        return self._update(
            batch_id, "SET input_bytes = :bytes, multipart_id = :upload",
            self._HELD + " AND attribute_not_exists(multipart_id)",
            {**self._held(owner), ":bytes": {"N": str(input_bytes)},
             ":upload": {"S": multipart_id}}) is not None

    def record_part(self, batch_id: str, owner: str, parts_before: int, etag: str,
                    offset: int, next_line: int, rows_done: int) -> bool:
        """Adds part number parts_before + 1 and where the input stands after
        it; False when the lease is lost or the batch is gone."""
        return self._update(
            batch_id, "SET etags = list_append(etags, :etag), #offset = :offset, "
                      "next_line = :line, rows_done = :rows",
            self._HELD + " AND size(etags) = :parts",
            {**self._held(owner), ":etag": {"L": [{"S": etag}]}, ":offset": {"N": str(offset)},
             ":line": {"N": str(next_line)}, ":rows": {"N": str(rows_done)},
             ":parts": {"N": str(parts_before)}}) is not None

    def release(self, batch_id: str, owner: str, handing_off: bool = False) -> bool:
        """Gives the lease up, so the next delivery need not wait for it. A run
        handing off to a continuation message also clears its delivery count:
        the continuation's deliveries count afresh."""
        return self._update(batch_id, "SET lease_expires = :zero"
                            + (", attempts = :zero" if handing_off else ""), self._HELD,
                            {**self._held(owner), ":zero": {"N": "0"}}) is not None

    def finish(self, batch_id: str, owner: str, status: BatchStatus, *, rows: int | None = None,
               error: str | None = None) -> bool:
        values = {**self._held(owner), ":status": {"S": str(status)}, ":zero": {"N": "0"}}
        update = "SET #status = :status, lease_expires = :zero"
        if rows is not None:
            update += ", #rows = :rows"
            values[":rows"] = {"N": str(rows)}
        if error is not None:
            update += ", #error = :error"
            values[":error"] = {"S": error}
        return self._update(batch_id, update, self._HELD, values) is not None

    def record_lost_attempt(self, batch_id: str, attempt: int, reason: str) -> bool:
        """Why delivery `attempt` ended without a word from the function (the
        local SQS runner sees it die; Lambda only logs it)."""
        return self._update(
            batch_id, "SET #status = :running, attempts = :attempt, lease_expires = :zero, "
                      "lost_attempt = :attempt, "
                      "lost_reason = :reason",
            "#status = :queued OR (#status = :running AND attempts <= :attempt)",
            {":attempt": {"N": str(attempt)}, ":zero": {"N": "0"}, ":reason": {"S": reason},
             ":queued": {"S": str(BatchStatus.QUEUED)},
             ":running": {"S": str(BatchStatus.RUNNING)}}) is not None

    def delete(self, batch_id: str) -> None:
        self._client.delete_item(TableName=self._table, Key={"batch_id": {"S": batch_id}})

    def of_model(self, model_id: str) -> list[str]:
        """The ids of the model's batches (the by_model index lags by a moment)."""
        query = {"TableName": self._table, "IndexName": BY_MODEL_INDEX,
                 "KeyConditionExpression": "model_id = :model",
                 "ExpressionAttributeValues": {":model": {"S": model_id}}}
        ids = []
        while True:
            answer = self._client.query(**query)
            ids += [item["batch_id"]["S"] for item in answer.get("Items", [])]
            if "LastEvaluatedKey" not in answer:
                return ids
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def csv_cell(text: str) -> str:
    """One CSV field as the csv module writes it (quoted when it must be)."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def label_text(label) -> str:
    """A class as the results file writes it: as JSON would, without quotes."""
    return label if isinstance(label, str) else orjson.dumps(label).decode()


class ResultWriter:
    """The results file's lines for a model: `row,label,<class>...`."""

    def __init__(self, model: ServingModel):
        self._model = model
        classes = model.classes.tolist()
        self._labels = [csv_cell(label_text(label)).encode() for label in classes]
        self.header = ("row,label," + ",".join(csv_cell(label_text(label))
                                               for label in classes) + "\n").encode()

    def lines(self, rows: np.ndarray, features: np.ndarray) -> bytes:
        model = self._model
        try:
            probabilities = model.predict_proba(features)
        except CsvError as error:
            raise CsvError(f"row {rows[self._first_unusable(features)]}: {error}") from None
        winners = probabilities.argmax(axis=1).tolist()
        # orjson writes each float at its shortest, exactly as predict's JSON does.
        numbers = orjson.dumps(probabilities, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2]
        labels = self._labels
        return b"".join([b"%d,%s,%s\n" % (row, labels[winner], values) for row, winner, values
                         in zip(rows.tolist(), winners, numbers.split(b"],["))])

    def _first_unusable(self, features: np.ndarray) -> int:
        model = self._model
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (features - model.mean) / model.scale
            scores = scaled @ model.coef.T + model.intercept
        usable = np.isfinite(scaled).all(axis=1) & np.isfinite(scores).all(axis=1)
        return int(np.argmin(usable))


class BatchService:
    """The API's side: submit, look up, delete; and a model's batches go with it."""

    def __init__(self, table: BatchTable, store: ArtifactStore, queue: BatchQueue):
        self._table = table
        self._store = store
        self._queue = queue

    def submit(self, model_id: str, body: bytes | None = None,
               upload_id: str | None = None) -> Batch:
        """Stores the posted CSV (or claims the upload), registers the batch and
        queues it. The caller has checked that the model can serve."""
        batch_id = new_batch_id()
        if upload_id is not None:
            # Claimed so the lifecycle rule for abandoned uploads leaves it.
            if not self._store.claim_upload(upload_id):
                raise LookupError(upload_id)
            input_key, owned, size = upload_key(upload_id), False, None
        else:
            input_key, owned, size = self._store.put_batch_input(batch_id, body), True, len(body)
        created = now_iso()
        batch = Batch(batch_id=batch_id, model_id=model_id, status=BatchStatus.QUEUED,
                      created_at=created, updated_at=created, input_key=input_key,
                      input_owned=owned, input_bytes=size,
                      expires_at=int(time.time()) + BATCH_RETENTION_DAYS * 86400)
        try:
            self._table.create(batch)
            self._queue.send(BatchMessage(batch_id, model_id))
        except Exception:
            with contextlib.suppress(Exception):
                self._table.delete(batch_id)
            if owned:
                with contextlib.suppress(Exception):
                    self._store.delete(input_key)
            raise
        log("batch.queued", batch_id=batch_id, model_id=model_id, input_key=input_key)
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self._table.get(batch_id) if is_batch_id(batch_id) else None
        if batch is None or (batch.expires_at is not None and batch.expires_at <= time.time()):
            raise BatchNotFound(batch_id)
        return batch

    def status(self, batch_id: str) -> dict:
        batch = self.get(batch_id)
        facts = batch.public()
        if batch.status == BatchStatus.DONE:
            facts["result_url"] = self._store.object_url(batch.result_key, RESULT_URL_SECONDS)
            facts["result_url_expires_in"] = RESULT_URL_SECONDS
        return facts

    def delete(self, batch_id: str) -> None:
        self.remove(self.get(batch_id))

    def remove(self, batch: Batch) -> None:
        """The item first (the batch is gone for clients, and a run still at work
        stops at its next part), then its parts, results and posted input."""
        self._table.delete(batch.batch_id)
        if batch.multipart_id:
            self._store.abort_multipart(batch.result_key, batch.multipart_id)
        self._store.delete(batch.result_key)
        if batch.input_owned:
            self._store.delete(batch.input_key)
        log("batch.deleted", batch_id=batch.batch_id, model_id=batch.model_id)

    def remove_for_model(self, model_id: str) -> int:
        """Removes every batch of a model being deleted (or swept as expired)."""
        removed = 0
        for batch_id in self._table.of_model(model_id):
            batch = self._table.get(batch_id)
            if batch is not None:
                self.remove(batch)
                removed += 1
        return removed


class BatchRunner:
    """app.py's run_batch: runs (or resumes) one batch for one message."""

    def __init__(self, table: BatchTable, store: ArtifactStore, registry: ModelRegistry,
                 predictor: Predictor, queue: BatchQueue, lease_seconds: float,
                 max_receives: int, handoff_seconds: float | None = None):
        self._table = table
        self._store = store
        self._registry = registry
        self._predictor = predictor
        self._queue = queue
        self._lease_seconds = lease_seconds
        self._max_receives = max_receives
        self._handoff_seconds = handoff_seconds

    def handle(self, message: BatchMessage, receive_count: int = 1,
               remaining_seconds: Callable[[], float] = lambda: float("inf")) -> str:
        ids = {"batch_id": message.batch_id, "model_id": message.model_id}
        owner = uuid.uuid4().hex
        taken, batch = self._table.take(message.batch_id, owner, self._lease_seconds,
                                        receive_count)
        if not taken:
            if batch is None:
                log("batch.skipped", reason="no such batch (deleted)", **ids)
                return "unknown batch"
            if batch.status in (BatchStatus.DONE, BatchStatus.FAILED):
                log("batch.skipped", reason=f"already {batch.status}", **ids)
                return "already done"
            # Another run holds it; this message comes back, and takes over if that run died.
            log("batch.deferred", reason="another run holds the lease", **ids)
            raise BatchInProgress(message.batch_id)
        log("batch.started", receive_count=receive_count, offset=batch.offset,
            parts=len(batch.etags), **ids)
        try:
            return self._run(batch, owner, remaining_seconds, ids)
        except (CsvError, ModelCannotServe) as error:
            self._fail(batch, owner, str(error), ids)
            return "failed"
        except Exception as error:
            if receive_count >= self._max_receives:
                self._fail(batch, owner, f"the batch failed {receive_count} times; last error: "
                                         f"{type(error).__name__}: {error}", ids)
            else:
                with contextlib.suppress(Exception):  # else the lease simply runs out
                    self._table.release(batch.batch_id, owner)
            log("batch.error", level=logging.ERROR, receive_count=receive_count,
                error=f"{type(error).__name__}: {error}", **ids)
            raise

    def _model(self, model_id: str) -> ServingModel:
        record = self._registry.get(model_id)
        if record is None or not record.visible:
            raise ModelCannotServe(f"model {model_id} no longer exists (it was deleted or "
                                   "it expired); its batches cannot run")
        if record.status != Status.READY:
            raise ModelCannotServe(f"model {model_id} is not ready to serve "
                                   f"({record.public()['status']})")
        embedded = None if record.serving is None else (record.serving, record.serving_hmac)
        return self._predictor.load(model_id, embedded)

    def _run(self, batch: Batch, owner: str, remaining: Callable[[], float], ids: dict) -> str:
        model = self._model(batch.model_id)
        writer = ResultWriter(model)
        if batch.multipart_id is None:
            size = self._store.object_size(batch.input_key)
            if size is None:
                raise ModelCannotServe(  # not the model's fault, but as final
                    f"the input {batch.input_key} is not in storage: nothing was sent to the "
                    "upload form, or it was deleted")
            multipart_id = self._store.start_multipart(batch.result_key)
            if not self._table.set_input(batch.batch_id, owner, size, multipart_id):
                self._store.abort_multipart(batch.result_key, multipart_id)
                return self._lost(batch, ids)
            batch.input_bytes, batch.multipart_id = size, multipart_id
        etags = list(batch.etags)
        part_bytes = max(MIN_PART_BYTES,
                         -(-(batch.input_bytes or 0) * RESULT_BYTES_PER_INPUT_BYTE // MAX_PARTS))
        if batch.offset < (batch.input_bytes or 0):
            stream = self._store.open_from(batch.input_key, batch.offset)
            try:
                pending: list[bytes] = [writer.header] if not etags else []
                pending_bytes, rows_done = sum(map(len, pending)), batch.rows_done
                for chunk in stream_features(stream, model.n_features, line=batch.next_line,
                                             offset=batch.offset):
                    if len(chunk.rows):
                        lines = writer.lines(chunk.rows, chunk.features)
                        pending.append(lines)
                        pending_bytes += len(lines)
                        rows_done += len(chunk.rows)
                    last = chunk.end >= batch.input_bytes
                    if last and rows_done == 0:
                        raise CsvError("the body is empty")
                    if pending_bytes < part_bytes and not last:
                        continue
                    if not pending_bytes:
                        break  # nothing after the last part but blank lines
                    etag = self._store.put_part(batch.result_key, batch.multipart_id,
                                                   len(etags) + 1, b"".join(pending))
                    pending, pending_bytes = [], 0
                    if not self._table.record_part(batch.batch_id, owner, len(etags), etag,
                                                   chunk.end, chunk.next_line, rows_done):
                        return self._lost(batch, ids)
                    etags.append(etag)
                    batch.offset, batch.rows_done = chunk.end, rows_done
                    log("batch.part", part=len(etags), rows_done=rows_done,
                        offset=chunk.end, **ids)
                    if last:
                        break
                    self._model(batch.model_id)  # deleted or expired meanwhile: stop
                    handoff = (HANDOFF_SECONDS if self._handoff_seconds is None
                               else self._handoff_seconds)
                    if remaining() < handoff:
                        return self._hand_off(batch, owner, ids)
            finally:
                stream.close()
        if not etags:
            raise CsvError("the body is empty")
        return self._complete(batch, owner, etags, ids)

    def _complete(self, batch: Batch, owner: str, etags: list[str], ids: dict) -> str:
        try:
            self._store.complete_multipart(batch.result_key, batch.multipart_id, etags)
        except ClientError as error:
            # Completed by an earlier run that died before it could say so.
            if error.response["Error"]["Code"] != "NoSuchUpload" \
                    or self._store.object_size(batch.result_key) is None:
                raise
        if not self._table.finish(batch.batch_id, owner, BatchStatus.DONE, rows=batch.rows_done):
            if self._table.get(batch.batch_id) is None:  # deleted meanwhile
                self._store.delete(batch.result_key)
            return self._lost(batch, ids)
        log("batch.done", rows=batch.rows_done, parts=len(etags), **ids)
        return "done"

    def _hand_off(self, batch: Batch, owner: str, ids: dict) -> str:
        self._table.release(batch.batch_id, owner, handing_off=True)
        self._queue.send(BatchMessage(batch.batch_id, batch.model_id))
        log("batch.handed_off", rows_done=batch.rows_done, offset=batch.offset, **ids)
        return "continued"

    def _lost(self, batch: Batch, ids: dict) -> str:
        """The lease went to another run, or the batch was deleted."""
        if self._table.get(batch.batch_id) is None and batch.multipart_id:
            self._store.abort_multipart(batch.result_key, batch.multipart_id)
        log("batch.lease_lost", **ids)
        return "lease lost"

    def _fail(self, batch: Batch, owner: str, error: str, ids: dict) -> None:
        if batch.multipart_id:
            with contextlib.suppress(Exception):
                self._store.abort_multipart(batch.result_key, batch.multipart_id)
        self._table.finish(batch.batch_id, owner, BatchStatus.FAILED, error=error)
        log("batch.failed", level=logging.WARNING, error=error, **ids)


class BatchInProgress(Exception):
    """Another run holds the batch; the message comes back later."""
