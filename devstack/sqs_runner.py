"""The SQS event-source runner: what AWS's event source mapping does for an
SQS-triggered Lambda (the trainer, or run_batch with --function run_batch),
done locally (`chalice local` does not run SQS handlers).

It long-polls the function's queue, builds the event AWS would send and invokes
the function in an execution environment (devstack.lambda_env: a worker
process limited to the function's memory and timeout from
.chalice/config.json, kept warm between messages). It deletes the message on
success and leaves it for redelivery (after the visibility timeout) when the
handler fails or its environment dies. SQS's redrive policy moves a message
that keeps failing to the dead-letter queue.

AWS wants a queue's visibility timeout to be at least the function's timeout
(ours: 6 x 900 s), so a message never comes back while its invocation runs.
The local queue's is short (60 s, `make run --visibility-timeout`) so that a
training whose runner died comes back soon; to keep the first promise too,
the runner extends a message's visibility while its invocation runs.

Lambda only logs why an environment died (out of memory, timed out, killed);
this runner also writes it into the model's item (ModelRegistry.
record_lost_attempt), so a model whose last attempt died says why.

    python -m devstack.sqs_runner [--stage dev] [--function {train_model,run_batch}]
                                  [--workers N] [--memory-size MB] [--timeout SECONDS]
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any, Callable, Protocol

from chalicelib import aws
from chalicelib.config import Settings
from chalicelib.logs import log
from devstack import stage
from devstack.lambda_env import Death, EnvironmentPool, FunctionSpec, Invocation

FUNCTION = "train_model"
HANDLER = "app.train_model"
# The SQS-triggered functions of app.py: handler, and the setting naming its queue.
FUNCTIONS = {"train_model": ("app.train_model", "queue"),
             "run_batch": ("app.run_batch", "batch_queue")}


class Function(Protocol):
    """What the runner invokes: devstack.lambda_env.EnvironmentPool."""

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation: ...


class InProcess:
    """A Function that calls the handler in this process, with no limits: for
    moto's in-process mocks (a worker process could not see them) and for
    counting a handler's AWS calls (bench). `make run` uses real environments."""

    def __init__(self, handler, name: str = "ml-api-dev-train_model"):
        self._handler = handler
        self._name = name

    def invoke(self, event: Any, request_id: str | None = None) -> Invocation:
        from chalice.local import LambdaContext

        context = LambdaContext(self._name, 3008, 900_000)
        try:
            payload = self._handler(event, context)
        except Exception as error:
            return Invocation(request_id or "in-process",
                              error={"errorType": type(error).__name__,
                                     "errorMessage": str(error)})
        return Invocation(request_id or "in-process", payload=payload)


# Called when an invocation's environment died: (message, receive count, death).
OnLost = Callable[[dict, int, Death], None]


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
    def __init__(self, sqs, queue_url: str, function: Function, *, wait_seconds: int = 1,
                 on_lost: OnLost | None = None):
        self._sqs = sqs
        self._queue_url = queue_url
        self._function = function
        self._wait_seconds = wait_seconds
        self._on_lost = on_lost
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn", "VisibilityTimeout"])["Attributes"]
        self._queue_arn = attributes["QueueArn"]
        self._visibility_timeout = int(attributes["VisibilityTimeout"])
        self._region = sqs.meta.region_name

    def poll_once(self) -> int:
        """Receives at most one message (batch size 1) and invokes the function on it."""
        messages = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=1,
            WaitTimeSeconds=self._wait_seconds,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])
        for message in messages:
            self._invoke(message)
        return len(messages)

    def _invoke(self, message: dict) -> None:
        receive_count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        done = threading.Event()
        keeper = threading.Thread(target=self._keep_invisible, args=(message, done),
                                  name="sqs-visibility", daemon=True)
        keeper.start()
        try:
            result = self._function.invoke(lambda_event(message, self._queue_arn, self._region))
        finally:
            done.set()
            keeper.join()
        # Lambda's REPORT line.
        log("runner.report", message_id=message["MessageId"], request_id=result.request_id,
            receive_count=receive_count, pid=result.pid, duration_ms=result.duration_ms,
            init_ms=result.init_ms, max_memory_mb=result.max_memory_mb,
            outcome="ok" if result.ok else (result.death.kind if result.death else "error"))
        if result.ok:
            self._sqs.delete_message(QueueUrl=self._queue_url,
                                     ReceiptHandle=message["ReceiptHandle"])
            return
        # Like Lambda: the message stays and comes back after its visibility timeout.
        if result.death is None:
            log("runner.handler_failed", level=logging.ERROR, message_id=message["MessageId"],
                receive_count=receive_count, error=f"{result.error.get('errorType')}: "
                                                   f"{result.error.get('errorMessage')}")
            return
        log("runner.environment_died", level=logging.ERROR, message_id=message["MessageId"],
            receive_count=receive_count, pid=result.pid, kind=str(result.death.kind),
            reason=result.death.reason, error=result.error)
        if self._on_lost is not None:
            try:
                self._on_lost(message, receive_count, result.death)
            except Exception as error:  # the emulator may be down too: the lease runs out
                log("runner.record_lost_failed", level=logging.WARNING,
                    message_id=message["MessageId"], error=f"{type(error).__name__}: {error}")

    def _keep_invisible(self, message: dict, done: threading.Event) -> None:
        """Extends the message's visibility while its invocation runs."""
        interval = max(0.5, self._visibility_timeout / 2)
        while not done.wait(interval):
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=self._visibility_timeout)
            except Exception as error:  # the emulator restarting: it may come back early
                log("runner.visibility_failed", level=logging.WARNING,
                    message_id=message["MessageId"], error=f"{type(error).__name__}: {error}")

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


def record_lost_training(registry) -> OnLost:
    """Writes why a training's environment died into its model's item."""
    from chalicelib.queue import TrainingMessage

    def record(message: dict, receive_count: int, death: Death) -> None:
        model_id = TrainingMessage.from_json(message["Body"]).model_id
        if registry.record_lost_attempt(model_id, receive_count, death.reason):
            log("runner.lost_attempt_recorded", model_id=model_id,
                receive_count=receive_count, reason=death.reason)

    return record


def record_lost_batch(batches) -> OnLost:
    """Writes why a batch run's environment died into the batch's item."""
    from chalicelib.batches import BatchMessage

    def record(message: dict, receive_count: int, death: Death) -> None:
        batch_id = BatchMessage.from_json(message["Body"]).batch_id
        if batches.record_lost_attempt(batch_id, receive_count, death.reason):
            log("runner.lost_attempt_recorded", batch_id=batch_id,
                receive_count=receive_count, reason=death.reason)

    return record


def trainer_spec(stage_name: str, memory_mb: int | None = None,
                 timeout_seconds: float | None = None) -> FunctionSpec:
    """The trainer as its stage deploys it, in this checkout, with this
    process's environment (the stage's variables, the emulator endpoint)."""
    return function_spec(FUNCTION, stage_name, memory_mb, timeout_seconds)


def function_spec(name: str, stage_name: str, memory_mb: int | None = None,
                  timeout_seconds: float | None = None) -> FunctionSpec:
    """An SQS-triggered function as its stage deploys it (memory and timeout
    from .chalice/config.json), in this checkout, with this process's environment."""
    function = stage.lambda_function(name, stage_name)
    return FunctionSpec(
        name=function.name, handler=FUNCTIONS[name][0], code_paths=(str(stage.PROJECT_DIR),),
        memory_mb=memory_mb or function.memory_mb,
        timeout_seconds=timeout_seconds or function.timeout_seconds,
        environment=dict(os.environ), region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _queue_url(sqs, name: str, stop: threading.Event) -> str | None:
    """The queue's URL, waiting while the emulator is unreachable (`make run`
    may have restarted this runner during an outage)."""
    while not stop.is_set():
        try:
            return sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except Exception as error:
            log("runner.queue_unavailable", level=logging.WARNING, queue=name,
                error=f"{type(error).__name__}: {error}")
            stop.wait(2)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Feed SQS messages to an SQS-triggered "
                                                 "function (the trainer by default).")
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--function", choices=sorted(FUNCTIONS), default=FUNCTION,
                        help="the function and its queue (default: train_model)")
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("RUNNER_WORKERS", os.cpu_count() or 1)),
                        help="messages processed at once, each in its own execution "
                             "environment, like an event source mapping's maximum "
                             "concurrency (default: the number of cores)")
    parser.add_argument("--memory-size", type=int, metavar="MB",
                        help="the function's memory limit (default: its lambda_memory_size "
                             "in .chalice/config.json)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="the function's time limit (default: its lambda_timeout)")
    args = parser.parse_args()
    stage.apply(args.stage)

    from chalicelib import components

    spec = function_spec(args.function, args.stage, args.memory_size, args.timeout)
    settings = Settings.from_env()
    queue = getattr(settings, FUNCTIONS[args.function][1])
    sqs = aws.client("sqs")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    queue_url = _queue_url(sqs, queue, stop)
    if queue_url is None:
        return
    pool = EnvironmentPool(spec, args.workers)
    on_lost = (record_lost_batch(components.batch_table()) if args.function == "run_batch"
               else record_lost_training(components.registry()))
    runner = SqsEventSourceRunner(sqs, queue_url, pool, on_lost=on_lost)
    log("runner.started", queue=queue, workers=args.workers, function=spec.name,
        memory_mb=spec.memory_mb, timeout_seconds=spec.timeout_seconds,
        endpoint=os.environ.get("AWS_ENDPOINT_URL", "AWS"))
    pollers = threading.Thread(target=runner.run, args=(stop, args.workers), daemon=True)
    pollers.start()
    while not stop.wait(0.5):
        pass
    # Stopping: end the environments at once (an unfinished training comes
    # back after its visibility timeout), then let the pollers return.
    pool.close()
    pollers.join(timeout=10)
    log("runner.stopped", queue=queue)


if __name__ == "__main__":
    main()
