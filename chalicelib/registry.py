"""The model registry: one DynamoDB item per model, and the only place that
knows the status values and what clients are told about them."""
from __future__ import annotations

import json
import time
from decimal import Decimal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from boto3.dynamodb.conditions import Attr
from botocore.exceptions import ClientError


class Status(StrEnum):
    # Written before the training message is sent; invisible to clients so a
    # submission that failed half-way never shows up as "training".
    SUBMITTING = "SUBMITTING"
    QUEUED = "QUEUED"
    TRAINING = "TRAINING"
    READY = "READY"
    FAILED = "FAILED"


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

@dataclass
class ModelRecord:
    model_id: str
    task_id: str
    status: Status
    created_at: str
    n_rows: int
    n_features: int
    dataset_key: str
    classes: list | None = None
    error: str | None = None
    updated_at: str | None = None

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
        return facts


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _conditional_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


class ModelRegistry:
    def __init__(self, table):
        self._table = table  # a boto3 DynamoDB Table resource

    def create(self, record: ModelRecord) -> bool:
        """Puts a new item; False when the id is taken."""
        item = {
            "model_id": record.model_id,
            "task_id": record.task_id,
            "status": str(record.status),
            "created_at": record.created_at,
            "updated_at": record.created_at,
            "n_rows": record.n_rows,
            "n_features": record.n_features,
            "dataset_key": record.dataset_key,
        }
        try:
            self._table.put_item(Item=item, ConditionExpression=Attr("model_id").not_exists())
        except ClientError as error:
            if _conditional_failed(error):
                return False
            raise
        return True

    def get(self, model_id: str) -> ModelRecord | None:
        item = self._table.get_item(Key={"model_id": model_id}, ConsistentRead=True).get("Item")
        if item is None:
            return None
        return ModelRecord(
            model_id=item["model_id"],
            task_id=item["task_id"],
            status=Status(item["status"]),
            created_at=item["created_at"],
            updated_at=item.get("updated_at"),
            n_rows=int(item["n_rows"]),
            n_features=int(item["n_features"]),
            dataset_key=item["dataset_key"],
            classes=json.loads(item["classes"]) if "classes" in item else None,
            error=item.get("error"),
        )

    def _transition(self, model_id: str, condition, new: Status, **values) -> bool:
        """Moves the item to `new` only if `condition` holds; False if it does not."""
        values["status"] = str(new)
        values["updated_at"] = now_iso()
        names = {f"#{k}": k for k in values}
        try:
            self._table.update_item(
                Key={"model_id": model_id},
                UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in values),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={f":{k}": v for k, v in values.items()},
            )
        except ClientError as error:
            if _conditional_failed(error):
                return False
            raise
        return True

    @staticmethod
    def _status_in(*statuses: Status):
        return Attr("status").is_in([str(s) for s in statuses])

    @staticmethod
    def _held_by(owner: str):
        return Attr("status").eq(str(Status.TRAINING)) & Attr("lease_owner").eq(owner)

    def mark_queued(self, model_id: str) -> bool:
        return self._transition(model_id, self._status_in(Status.SUBMITTING), Status.QUEUED)

    def start_training(self, model_id: str, owner: str, lease_seconds: float) -> bool:
        """Takes the training lease: the model is waiting, or its last trainer's
        lease has run out (it crashed). Two deliveries at once: one wins."""
        now = time.time()
        free = self._status_in(Status.SUBMITTING, Status.QUEUED) | (
            Attr("status").eq(str(Status.TRAINING)) & Attr("lease_expires").lt(Decimal(str(now))))
        return self._transition(model_id, free, Status.TRAINING, lease_owner=owner,
                                lease_expires=Decimal(str(round(now + lease_seconds, 3))))

    def release(self, model_id: str, owner: str) -> bool:
        """Gives the lease up after a retryable failure, so the retry need not wait."""
        return self._transition(model_id, self._held_by(owner), Status.TRAINING,
                                lease_expires=Decimal(0))

    def mark_ready(self, model_id: str, classes: list, owner: str) -> bool:
        return self._transition(model_id, self._held_by(owner), Status.READY,
                                classes=json.dumps(classes))

    def mark_failed(self, model_id: str, error: str, owner: str) -> bool:
        return self._transition(model_id, self._held_by(owner), Status.FAILED, error=error)

    def delete(self, model_id: str) -> None:
        self._table.delete_item(Key={"model_id": model_id})
