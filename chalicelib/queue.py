"""The training queue: what a training message carries."""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainingMessage:
    model_id: str
    dataset_key: str
    task_id: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, body: str) -> "TrainingMessage":
        data = json.loads(body)
        return cls(model_id=data["model_id"], dataset_key=data["dataset_key"],
                   task_id=data.get("task_id", ""))


class TrainingQueue:
    def __init__(self, sqs, queue_name: str):
        self._sqs = sqs  # a boto3 SQS client
        self._queue_name = queue_name

    @functools.cached_property
    def url(self) -> str:
        return self._sqs.get_queue_url(QueueName=self._queue_name)["QueueUrl"]

    def send(self, message: TrainingMessage) -> str:
        """Enqueues a training message; returns SQS's message id."""
        return self._sqs.send_message(QueueUrl=self.url, MessageBody=message.to_json())["MessageId"]
