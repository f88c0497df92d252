"""Look at the training dead-letter queue and send its messages back.

    python -m devstack.dlq list      [--stage dev] [--endpoint URL|aws]
    python -m devstack.dlq redrive   [--stage dev] [--endpoint URL|aws]

Works against the local emulator (the default: AWS_ENDPOINT_URL, else
http://127.0.0.1:4566) or, with `--endpoint aws`, AWS itself, where
`aws sqs start-message-move-task --source-arn <DLQ ARN>` does the same
redrive server-side.
"""
from __future__ import annotations

import argparse
import json
import os

from chalicelib import aws
from chalicelib.config import Settings
from devstack import stage


def _url(sqs, name: str) -> str:
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def dead_messages(sqs, settings: Settings, limit: int = 100) -> list[dict]:
    """Peeks at up to `limit` dead messages (they stay in the queue)."""
    url, seen = _url(sqs, settings.dead_letter_queue), {}
    for _ in range(limit // 10 + 1):
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=5,
                                    AttributeNames=["All"]).get("Messages", [])
        if not batch:
            break
        for message in batch:
            seen[message["MessageId"]] = message
    for message in seen.values():  # visible again at once
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                      VisibilityTimeout=0)
    return list(seen.values())[:limit]


def redrive(sqs, settings: Settings) -> int:
    """Moves every dead message back to the training queue; returns how many."""
    dead, live, moved = _url(sqs, settings.dead_letter_queue), _url(sqs, settings.queue), 0
    while True:
        batch = sqs.receive_message(QueueUrl=dead, MaxNumberOfMessages=10,
                                    VisibilityTimeout=30).get("Messages", [])
        if not batch:
            return moved
        for message in batch:
            # Sent before it is deleted: a crash in between duplicates, never loses,
            # and the trainer's lease makes a duplicate harmless.
            sqs.send_message(QueueUrl=live, MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=dead, ReceiptHandle=message["ReceiptHandle"])
            moved += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["list", "redrive"])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--endpoint", default=os.environ.get(
        "AWS_ENDPOINT_URL", f"http://127.0.0.1:{stage.DEFAULT_EMULATOR_PORT}"),
        help="the emulator's URL, or 'aws' for AWS itself")
    args = parser.parse_args()
    if args.endpoint == "aws":
        os.environ.pop("AWS_ENDPOINT_URL", None)
    stage.apply(args.stage, None if args.endpoint == "aws" else args.endpoint)
    settings, sqs = Settings.from_env(), aws.client("sqs")
    if args.action == "list":
        for message in dead_messages(sqs, settings):
            body = json.loads(message["Body"])
            print(f"{body.get('model_id')}  task {body.get('task_id')}  received "
                  f"{message['Attributes'].get('ApproximateReceiveCount')} times")
    else:
        print(f"moved {redrive(sqs, settings)} message(s) back to {settings.queue}")


if __name__ == "__main__":
    main()
