"""The model registry: one DynamoDB item per model, and the only place that
knows the status values and what clients are told about them."""
from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Iterator

from botocore.exceptions import ClientError


class Status(StrEnum):
    # Written before the training message is sent; invisible to clients so a
    # submission that failed half-way never shows up as "training".
    SUBMITTING = "SUBMITTING"
    QUEUED = "QUEUED"
    TRAINING = "TRAINING"
    READY = "READY"
    FAILED = "FAILED"
    # Being deleted: invisible, and a DELETE that was cut short can finish.
    DELETING = "DELETING"


# The seed's exact strings.
TRAINING_TEXT = "Model is Training"
READY_TEXT = "Ready to Use"
FAILED_TEXT = "Training Failed"

PUBLIC_STATUS = {
    Status.QUEUED: TRAINING_TEXT,
    Status.TRAINING: TRAINING_TEXT,
    Status.READY: READY_TEXT,
    Status.FAILED: FAILED_TEXT,
}
# What GET /models?status= accepts.
STATUS_FILTERS = {"training": {Status.QUEUED, Status.TRAINING}, "ready": {Status.READY},
                  "failed": {Status.FAILED}}


class InvalidPageToken(ValueError):
    pass

@dataclass
class ModelRecord:
    model_id: str
    task_id: str
    status: Status
    created_at: str
    n_rows: int | None  # None until the trainer has read an uploaded dataset
    n_features: int | None
    dataset_key: str
    classes: list | None = None
    error: str | None = None
    updated_at: str | None = None
    # The serving arrays and their signature, when small enough to ride in the
    # item: a cold container then needs one GetItem, and no S3 client, to answer.
    serving: bytes | None = None
    serving_hmac: str | None = None
    expires_at: int | None = None  # epoch seconds; DynamoDB's TTL attribute
    options: str | None = None  # the training options, as JSON
    feature_names: list | None = None
    metrics: dict | None = None
    # model.pkl's SHA-256, which clients check downloads against: kept here,
    # apart from the bucket, so whoever can write to the bucket cannot change
    # the artifact and its digest together.
    pipeline_sha256: str | None = None

    @property
    def visible(self) -> bool:
        return self.status in PUBLIC_STATUS

    def public(self) -> dict[str, Any]:
        """What status answers show: the seed's status string plus the facts."""
        facts: dict[str, Any] = {
            "status": PUBLIC_STATUS[self.status],
            "model_id": self.model_id,
            "task_id": self.task_id,
            "created_at": self.created_at,
            "n_rows": self.n_rows,
            "n_features": self.n_features,
        }
        if self.classes is not None:
            facts["classes"] = self.classes
        if self.error is not None:
            facts["error"] = self.error
        if self.options is not None:
            facts["options"] = json.loads(self.options)
        if self.feature_names is not None:
            facts["feature_names"] = self.feature_names
        if self.metrics is not None:
            facts["metrics"] = self.metrics
        if self.expires_at is not None:
            facts["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
        return facts


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _epoch(iso: str) -> float:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


@dataclass(frozen=True)
class StoredModel:
    """What the expiry sweep needs to know of every item, whatever its state."""
    model_id: str
    status: str
    dataset_key: str
    expires_at: int | None
    updated_at: str | None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def deleting_since(self, now: float) -> float | None:
        """Seconds since a DELETE hid the model, if one did and has not finished."""
        if self.status != Status.DELETING or not self.updated_at:
            return None
        return now - _epoch(self.updated_at)


def _conditional_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


LISTING = "model"  # the by_created index's one partition: every model
LISTING_INDEX = "by_created"


# A page token is where the previous page stopped: that model's creation
# second and id, "2026-12-02T11:35:00Z.model_20261202-113500_0123456789ab".
# Any string of this shape is a position in the by_created index (DynamoDB
# takes any key as ExclusiveStartKey): the page holds the models listed after
# it, so every token the OpenAPI document allows is one the service accepts.
PAGE_TOKEN_SHAPE = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
                    r"\.[A-Za-z0-9_-]{1,64}")
_PAGE_TOKEN = re.compile(PAGE_TOKEN_SHAPE)


def _encode_token(key: dict) -> str:
    created_at = key["created_seq"]["S"].split("#", 1)[0]
    return f"{created_at}.{key['model_id']['S']}"


def _decode_token(token: str) -> dict:
    """The index key a page token stands for; InvalidPageToken if it is not one."""
    if not _PAGE_TOKEN.fullmatch(token):
        raise InvalidPageToken(token[:100])
    created_at, model_id = token.split(".", 1)
    return {"listing": {"S": LISTING}, "created_seq": {"S": f"{created_at}#{model_id}"},
            "model_id": {"S": model_id}}


# DynamoDB's attribute-value format, for the few types the items hold. The
# low-level client (not boto3's resource layer) keeps boto3 and s3transfer out
# of the Lambda's cold start.
def _to_attribute(value) -> dict:
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": repr(value)}
    if isinstance(value, bytes):
        return {"B": value}
    raise TypeError(f"no DynamoDB type for {type(value).__name__}")


def _from_attribute(attribute: dict):
    (kind, value), = attribute.items()
    if kind == "N":
        return float(value) if any(c in value for c in ".eE") else int(value)
    return value  # S, B, BOOL


class ModelRegistry:
    def __init__(self, dynamodb, table: str, max_receives: int = 3):
        self._client = dynamodb  # a botocore DynamoDB client
        self._table = table
        # A trainer that dies (killed, out of memory, timed out) writes nothing;
        # once its last delivery's lease has run out, the model is reported
        # failed: SQS dead-letters the message on the next receive.
        self._max_receives = max_receives

    def create(self, record: ModelRecord) -> bool:
        """Puts a new item; False when the id is taken."""
        item = {
            "model_id": record.model_id,
            "task_id": record.task_id,
            "status": str(record.status),
            "created_at": record.created_at,
            "updated_at": record.created_at,
            "dataset_key": record.dataset_key,
            # The by_created index lists models newest first.
            "listing": LISTING,
            "created_seq": f"{record.created_at}#{record.model_id}",
        }
        for name in ("n_rows", "n_features", "expires_at"):
            if getattr(record, name) is not None:
                item[name] = getattr(record, name)
        if record.options is not None:
            item["options"] = record.options
        if record.feature_names is not None:
            item["feature_names"] = json.dumps(record.feature_names)
        try:
            self._client.put_item(
                TableName=self._table,
                Item={name: _to_attribute(value) for name, value in item.items()},
                ConditionExpression="attribute_not_exists(model_id)")
        except ClientError as error:
            if _conditional_failed(error):
                return False
            raise
        return True

    def get(self, model_id: str, include_deleting: bool = False,
            include_expired: bool = False) -> ModelRecord | None:
        """The model's record; None if there is none, or it has expired (DynamoDB
        removes expired items only eventually), or it is being deleted."""
        answer = self._client.get_item(TableName=self._table, ConsistentRead=True,
                                       Key={"model_id": {"S": model_id}})
        if "Item" not in answer:
            return None
        record = self._record(answer["Item"], None if include_expired else time.time())
        if record is None or (record.status == Status.DELETING and not include_deleting):
            return None
        return record

    def _record(self, attributes: dict, now: float | None) -> ModelRecord | None:
        """The item as a record; None if it expired before `now` (None: never)."""
        item = {name: _from_attribute(value) for name, value in attributes.items()}
        if now is not None and item.get("expires_at") is not None and item["expires_at"] <= now:
            return None
        status, error = Status(item["status"]), item.get("error")
        if (status == Status.TRAINING and item.get("attempts", 0) >= self._max_receives
                and item.get("lease_expires", 0) < time.time()):
            status = Status.FAILED
            if item.get("lost_attempt") == item["attempts"]:
                why = f": on the last one the trainer {item['lost_reason']}"
            else:
                why = " (the trainer was killed, ran out of memory or timed out)"
            error = (f"training did not finish in {item['attempts']} deliveries{why}; the "
                     "training message is in the dead-letter queue")
        return ModelRecord(
            model_id=item["model_id"],
            task_id=item["task_id"],
            status=status,
            created_at=item["created_at"],
            updated_at=item.get("updated_at"),
            n_rows=item.get("n_rows"),
            n_features=item.get("n_features"),
            dataset_key=item["dataset_key"],
            classes=json.loads(item["classes"]) if "classes" in item else None,
            error=error,
            serving=item.get("serving"),
            serving_hmac=item.get("serving_hmac"),
            expires_at=item.get("expires_at"),
            options=item.get("options"),
            feature_names=json.loads(item["feature_names"]) if "feature_names" in item else None,
            metrics=json.loads(item["metrics"]) if "metrics" in item else None,
            pipeline_sha256=item.get("pipeline_sha256"),
        )

    def page(self, limit: int, token: str | None = None,
             statuses: set[Status] | None = None) -> tuple[list[ModelRecord], str | None]:
        """One page of visible models, newest first, and the token of the next
        page (None after the last). Filtering happens after DynamoDB's limit,
        so a page may hold fewer than `limit` models while more follow."""
        start = _decode_token(token) if token else None
        query = {"TableName": self._table, "IndexName": LISTING_INDEX, "Limit": limit,
                 "KeyConditionExpression": "listing = :listing",
                 "ExpressionAttributeValues": {":listing": {"S": LISTING}},
                 "ScanIndexForward": False}
        if start:
            query["ExclusiveStartKey"] = start
        answer = self._client.query(**query)
        now = time.time()
        records = [r for r in (self._record(item, now) for item in answer.get("Items", []))
                   if r is not None and r.visible and (not statuses or r.status in statuses)]
        after = answer.get("LastEvaluatedKey")
        return records, _encode_token(after) if after else None

    def every_model(self) -> Iterator[StoredModel]:
        """Every item, expired, hidden or not, newest first (the by_created index
        holds them all; it lags writes by a moment, as any index does)."""
        query = {"TableName": self._table, "IndexName": "by_created",
                 "KeyConditionExpression": "listing = :listing",
                 "ExpressionAttributeValues": {":listing": {"S": LISTING}},
                 "ProjectionExpression": "model_id, #status, dataset_key, expires_at, updated_at",
                 "ExpressionAttributeNames": {"#status": "status"},
                 "ScanIndexForward": False}
        while True:
            answer = self._client.query(**query)
            for attributes in answer.get("Items", []):
                item = {name: _from_attribute(value) for name, value in attributes.items()}
                yield StoredModel(item["model_id"], item["status"], item["dataset_key"],
                                  item.get("expires_at"), item.get("updated_at"))
            if "LastEvaluatedKey" not in answer:
                return
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _transition(self, model_id: str, condition: str, new: Status,
                    condition_values: dict | None = None, **values) -> bool:
        """Moves the item to `new` if `condition` holds (names in it are
        written #name, values :name); False if it does not."""
        try:
            self._update(model_id, condition, new, condition_values, values)
        except ClientError as error:
            if _conditional_failed(error):
                return False
            raise
        return True

    def _update(self, model_id: str, condition: str, new: Status, condition_values: dict | None,
                values: dict, **call) -> dict:
        values["status"] = str(new)
        values["updated_at"] = now_iso()
        bound = {f":{k}": _to_attribute(v) for k, v in values.items()}
        bound.update({f":{k}": _to_attribute(v) for k, v in (condition_values or {}).items()})
        names = {f"#{k}": k for k in values}
        names.update({"#status": "status"})
        for name in ("lease_owner", "lease_expires", "attempts", "expires_at"):
            if f"#{name}" in condition:
                names[f"#{name}"] = name
        return self._client.update_item(
            TableName=self._table,
            Key={"model_id": {"S": model_id}},
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in values),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=bound,
            **call,
        )

    # Conditions, with the values they need.
    _WAITING = "#status IN (:submitting, :queued)"
    _EXPIRED_LEASE = "(#status = :training AND #lease_expires < :now)"
    _HELD = "#status = :training AND #lease_owner = :owner"

    def mark_queued(self, model_id: str) -> bool:
        return self._transition(model_id, "#status = :submitting", Status.QUEUED,
                                {"submitting": str(Status.SUBMITTING)})

    def start_training(self, model_id: str, owner: str, lease_seconds: float,
                       receive_count: int = 1) -> bool:
        return self.try_start_training(model_id, owner, lease_seconds, receive_count)[0]

    # A trainer that died on the last allowed delivery leaves the model failed
    # (see _record): a later delivery must not take it over.
    _EXPIRED_LEASE_TO_RETRY = (f"({_EXPIRED_LEASE[1:-1]} AND #attempts < :max_receives)")
    _NOT_EXPIRED = "(attribute_not_exists(#expires_at) OR #expires_at > :now)"

    def try_start_training(self, model_id: str, owner: str, lease_seconds: float,
                           receive_count: int = 1) -> tuple[bool, ModelRecord | None]:
        """Takes the training lease: the model is waiting, or its last trainer's
        lease has run out (it crashed). Two deliveries at once: one wins.

        One conditional write, no read first: (True, the record as it now
        is), or (False, the record as it was: None if there is none or it has
        expired)."""
        now = time.time()
        try:
            answer = self._update(
                model_id,
                f"({self._WAITING} OR {self._EXPIRED_LEASE_TO_RETRY}) AND {self._NOT_EXPIRED}",
                Status.TRAINING,
                {"submitting": str(Status.SUBMITTING), "queued": str(Status.QUEUED),
                 "training": str(Status.TRAINING), "now": round(now, 3),
                 "max_receives": self._max_receives},
                {"lease_owner": owner, "lease_expires": round(now + lease_seconds, 3),
                 "attempts": receive_count},
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as error:
            if not _conditional_failed(error):
                raise
            item = error.response.get("Item")
            return False, None if item is None else self._record(item, now)
        return True, self._record(answer["Attributes"], now)

    def record_lost_attempt(self, model_id: str, attempt: int, reason: str) -> bool:
        """Notes why training attempt `attempt` (its receive count) ended without
        a word from the trainer, and ends its lease so the next delivery need not
        wait for it. `reason` completes "the trainer ...", e.g. "ran out of its
        3008 MB of memory". Once the last attempt is lost, the model reads as
        failed with this reason. Lambda only logs such deaths, so in AWS nothing
        calls this and such a model fails with the generic reason; whoever sees
        the trainer die (the local SQS runner) calls it.

        An attempt that died before the trainer took the lease (the model still
        queued, or left by an earlier attempt with its lease run out) counts
        too, or a model whose every attempt died that early would say
        "training" for ever. False when the model is not in that attempt any
        more (finished, or taken over by a later one)."""
        return self._transition(
            model_id, "#status = :queued OR (#status = :training AND (#attempts = :attempt OR "
                      "(#attempts < :attempt AND #lease_expires < :now)))",
            Status.TRAINING,
            {"training": str(Status.TRAINING), "queued": str(Status.QUEUED), "attempt": attempt,
             "now": round(time.time(), 3)},
            attempts=attempt, lease_expires=0, lost_attempt=attempt, lost_reason=reason)

    def _held_by(self, owner: str) -> dict:
        return {"training": str(Status.TRAINING), "owner": owner}

    def release(self, model_id: str, owner: str) -> bool:
        """Gives the lease up after a retryable failure, so the retry need not wait."""
        return self._transition(model_id, self._HELD, Status.TRAINING, self._held_by(owner),
                                lease_expires=0)

    def mark_ready(self, model_id: str, classes: list, owner: str,
                   serving: tuple[bytes, str] | None = None, metrics: dict | None = None,
                   shape: tuple[int, int] | None = None,
                   feature_names: list[str] | None = None,
                   pipeline_sha256: str | None = None) -> bool:
        """Ready, with what training learnt: the classes, the serving arrays
        (when small enough), the metrics, for uploads the data's shape, and
        model.pkl's SHA-256."""
        extra = {} if serving is None else {"serving": serving[0], "serving_hmac": serving[1]}
        if metrics is not None:
            extra["metrics"] = json.dumps(metrics)
        if shape is not None:
            extra["n_rows"], extra["n_features"] = shape
        if feature_names is not None:
            extra["feature_names"] = json.dumps(feature_names)
        if pipeline_sha256 is not None:
            extra["pipeline_sha256"] = pipeline_sha256
        return self._transition(model_id, self._HELD, Status.READY, self._held_by(owner),
                                classes=json.dumps(classes), **extra)

    def mark_failed(self, model_id: str, error: str, owner: str) -> bool:
        return self._transition(model_id, self._HELD, Status.FAILED, self._held_by(owner),
                                error=error)

    def mark_deleting(self, model_id: str, expired_by: float | None = None) -> bool:
        """Hides the model at once; False if there is no such model. With
        `expired_by` (the sweep), only a model that expired by then or that a
        DELETE already hid: never one that is alive."""
        if expired_by is None:
            return self._transition(model_id, "attribute_exists(#status)", Status.DELETING)
        return self._transition(
            model_id, "#status = :deleting OR #expires_at <= :expired_by", Status.DELETING,
            {"deleting": str(Status.DELETING), "expired_by": round(expired_by, 3)})

    def delete(self, model_id: str) -> None:
        self._client.delete_item(TableName=self._table, Key={"model_id": {"S": model_id}})
