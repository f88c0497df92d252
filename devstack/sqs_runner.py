"""The SQS event-source runner: what AWS's event source mapping does for the
trainer Lambda, done locally (`chalice local` does not run SQS handlers).

It long-polls the training queue, builds the event AWS would send, invokes the
real Chalice handler, deletes the message on success and leaves it for
redelivery (after the visibility timeout) on failure. SQS's redrive policy
moves a message that keeps failing to the dead-letter queue.

    python -m devstack.sqs_runner [--stage dev] [--workers N]
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import traceback
from typing import Any, Callable


from chalicelib import aws
from chalicelib.config import Settings
from chalicelib.logs import log
from devstack import stage

Handler = Callable[[dict, Any], Any]


def lambda_event(message: dict, queue_arn: str, region: str) -> dict:
    """The event shape Lambda delivers for one SQS message."""
    return {"Records": [{
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: {"stringValue": value.get("StringValue"),
                   "binaryValue": value.get("BinaryValue"),
                   "stringListValues": [], "binaryListValues": [],
                   "dataType": value["DataType"]}
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }]}


class SqsEventSourceRunner:
    def __init__(self, sqs, queue_url: str, handler: Handler, *, function_name: str,
                 timeout_seconds: int = 900, memory_mb: int = 3008, wait_seconds: int = 1):
        self._sqs = sqs
        self._queue_url = queue_url
        self._handler = handler
        self._function_name = function_name
        self._timeout_ms = timeout_seconds * 1000
        self._memory_mb = memory_mb
        self._wait_seconds = wait_seconds
        self._queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self._region = sqs.meta.region_name

    def poll_once(self) -> int:
        """Receives at most one message (batch size 1) and runs the handler on it."""
        messages = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=1,
            WaitTimeSeconds=self._wait_seconds,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])
        for message in messages:
            self._invoke(message)
        return len(messages)

    def _invoke(self, message: dict) -> None:
        from chalice.local import LambdaContext

        context = LambdaContext(self._function_name, self._memory_mb, self._timeout_ms)
        event = lambda_event(message, self._queue_arn, self._region)
        try:
            self._handler(event, context)
        except Exception as error:
            # Like Lambda: the message stays and comes back after its
            # visibility timeout.
            log("runner.handler_failed", level=logging.ERROR, message_id=message["MessageId"],
                error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
            return
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def run(self, stop: threading.Event, workers: int = 1) -> None:
        """Polls with `workers` concurrent pollers until `stop` is set."""
        def loop() -> None:
            while not stop.is_set():
                try:
                    self.poll_once()
                except Exception as error:  # emulator restarting, network blips
                    log("runner.poll_failed", level=logging.WARNING, error=str(error))
                    stop.wait(1)

        threads = [threading.Thread(target=loop, name=f"sqs-poller-{i}", daemon=True)
                   for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description="Feed SQS training messages to the trainer.")
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("RUNNER_WORKERS", os.cpu_count() or 1)),
                        help="messages processed at once, like an event source mapping's "
                             "maximum concurrency (default: the number of cores)")
    args = parser.parse_args()
    stage.apply(args.stage)

    from app import app, train_model  # after the environment is set

    settings = Settings.from_env()
    sqs = aws.client("sqs")
    runner = SqsEventSourceRunner(
        sqs, sqs.get_queue_url(QueueName=settings.queue)["QueueUrl"], train_model,
        function_name=f"{app.app_name}-{args.stage}-train_model")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log("runner.started", queue=settings.queue, workers=args.workers,
        endpoint=os.environ.get("AWS_ENDPOINT_URL", "AWS"))
    runner.run(stop, args.workers)


if __name__ == "__main__":
    main()
