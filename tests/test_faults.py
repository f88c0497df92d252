"""Faults, end to end: real processes on free 127.0.0.1 ports, made to fail.

* The training queue (moto's server, bootstrapped with short visibility
  timeouts, and `python -m devstack.sqs_runner` processes): a trainer killed
  mid-training, or on every delivery; a poison message; a message delivered
  twice at once. Each test bootstraps its own bucket, table and queues in one
  shared emulator.
* The trainer's execution environment (devstack.lambda_env, under the
  runner): its worker process killed mid-training; a dataset that needs more
  than a small memory limit; a training longer than a small timeout.
* The emulator killed under `devstack.run` and coming back empty, both when
  it was started elsewhere and when `devstack.run` started it (and starts it
  again); the trainer and the API server killed under `devstack.run`; the
  emulator hung (SIGSTOP) under `devstack.server`.
* A stack started by `devstack.run` (tests/stack.py's running_stack) with API
  keys on and a 1 s recheck interval: a lost status item, a missing, tampered
  or swapped artifact, API keys.

Every wait is bounded, every process is stopped in teardown (also when a test
fails), and each scenario records what it did in RELIABILITY.md
(tests/reliability.py). Bugs found here are strict xfails naming the bug: when
one is fixed its test passes, pytest reports XPASS(strict) as a failure, and
the marker is to be removed.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import boto3
import numpy as np
import pytest
import requests
from botocore.config import Config

from chalicelib import training
from chalicelib.config import Settings
from chalicelib.queue import TrainingMessage
from chalicelib.registry import ModelRecord, ModelRegistry, Status, now_iso
from chalicelib.security import SIGNATURE_METADATA, ArtifactSigner, TamperedArtifact
from chalicelib.service import new_model_id
from chalicelib.serving import ServingModel
from chalicelib.storage import PIPELINE_ARTIFACT, SERVING_ARTIFACT, artifact_key, dataset_key
from devstack import bootstrap, emulator, stage
from devstack.ports import answers, free_ports, stop_process, tail
from tests.reliability import record
from tests.stack import (clean_environment, kill_leftovers, running_stack, stack_command,
                         wait_for_training, wait_until_answering)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
IRIS = (REPO / "iris.csv").read_bytes()
HOST = "127.0.0.1"
REGION = "us-east-1"
SIGNING_KEY = "faults-signing-key-0123456789abcdef"

# The seed's texts, spelled out rather than imported from the code under test.
MODEL_NOT_FOUND = ("The model id you supplied either doesn't exist or the model_id "
                   "provided is wrong.")
TRAINING = "Model is Training"
READY = "Ready to Use"
FAILED = "Training Failed"
UNKNOWN_ID = "model_20000101-000000_000000000000"  # well-formed, never issued
MODEL_ID = re.compile(r"model_\d{8}-\d{6}_[0-9a-f]{12}")
IRIS_ROW = b"6.9,3.1,5.1,2.3\n"

HTTP_TIMEOUT = 30       # no request may hang the suite
STARTUP_TIMEOUT = 60
STOP_TIMEOUT = 20
TRAINING_TIMEOUT = 60
OUTAGE_ANSWER_LIMIT = 15  # seconds a request may take to say 503 while AWS is down
RECOVERY_LIMIT = 10       # seconds until the API works after the emulator is back

# Large enough that training takes seconds (reading ~14 MB, parsing, importing
# scikit-learn, fitting), so that a trainer killed within milliseconds of
# logging training.started has not written anything yet.
SLOW_ROWS, SLOW_FEATURES, SLOW_CLASSES = 60_000, 32, 6
# For the trainer's limits: a 36 MB CSV whose parsing alone peaks at ~450 MB
# above an idle worker, and whose training takes several seconds even on a
# fast machine (reading, parsing, importing scikit-learn, two fits).
LARGE_ROWS = 150_000
# The streaming trainer fits 150,000 x 32 in about 250 MB, iris in about 190 MB.
SMALL_MEMORY_MB = 250
OVER_MEMORY_ROWS = 400_000
SMALL_TIMEOUT_SECONDS = 1


# --- processes ----------------------------------------------------------------------

@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path | None
    stop_signal: int
    own_session: bool

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Every process a test starts, each stopped by its id in teardown."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def spawn(self, name: str, command: list[str], env: dict[str, str], log: Path,
              stop_signal: int = signal.SIGTERM) -> Process:
        with open(log, "ab") as output:
            popen = subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        process = Process(name, popen, log, stop_signal, own_session=True)
        self.started.append(process)
        return process

    def adopt(self, name: str, popen: subprocess.Popen, log: Path | None) -> Process:
        """A process started elsewhere (devstack.emulator.start_moto)."""
        process = Process(name, popen, log, signal.SIGTERM, own_session=False)
        self.started.append(process)
        return process

    def kill(self, process: Process) -> None:
        """SIGKILL, as a crash would; waits until it is gone."""
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(timeout=STOP_TIMEOUT)

    def stop(self, process: Process) -> list[str]:
        """Stops one process as Ctrl-C or a service manager would; returns
        what went wrong (it had to be killed, it left processes behind)."""
        problems = []
        if process.alive():
            process.popen.send_signal(process.stop_signal)
            try:
                process.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"{process.name} did not exit within {STOP_TIMEOUT} s of "
                                f"signal {process.stop_signal}; killed")
                process.popen.kill()
                process.popen.wait(timeout=STOP_TIMEOUT)
        if process.own_session and (left := kill_leftovers(process.pid)):
            problems.append(f"{process.name} left processes {left} running; killed")
        return problems

    def stop_all(self) -> list[str]:
        problems = []
        for process in reversed(self.started):
            problems += self.stop(process)
        return problems

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{tail(p.log)}"
                         for p in self.started if p.log)


@pytest.fixture
def processes():
    started = Processes()
    yield started
    problems = started.stop_all()
    if problems:
        pytest.fail("; ".join(problems) + "\n" + started.logs(), pytrace=False)


def _wait_for(condition: Callable[[], object], timeout: float, what: str,
              context: Callable[[], str] = lambda: "", interval: float = 0.1):
    """condition()'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{context()}", pytrace=False)
        time.sleep(interval)


def _events(*logs: Path, event: str | None = None, model_id: str | None = None) -> list[dict]:
    """The structured log lines (chalicelib.logs) in these files, in order."""
    found = []
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if event is not None and entry.get("event") != event:
                continue
            if model_id is not None and entry.get("model_id") != model_id:
                continue
            found.append(entry)
    return found


# --- the environment processes get ---------------------------------------------------

def _base_environment(endpoint: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without anything that could redirect the
    app (a developer's AWS profile, stage variables, ports: tests/stack.py's
    clean_environment), with the signing key, plus `extra`."""
    return clean_environment({"MODEL_SIGNING_KEY": SIGNING_KEY,
                              **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}), **extra})


# --- AWS, looked at from the test ---------------------------------------------------

@dataclass
class Aws:
    """boto3 clients on the emulator, for looking behind the service's back."""
    endpoint: str
    settings: Settings
    session: boto3.session.Session = field(init=False)

    def __post_init__(self) -> None:
        self.session = boto3.session.Session(aws_access_key_id="test",
                                             aws_secret_access_key="test",
                                             region_name=REGION)
        config = Config(connect_timeout=2, read_timeout=30, retries={"total_max_attempts": 2})
        self.s3 = self.session.client("s3", endpoint_url=self.endpoint, config=config)
        self.sqs = self.session.client("sqs", endpoint_url=self.endpoint, config=config)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=self.endpoint,
                                            config=config)
        self.registry = ModelRegistry(self.dynamodb, self.settings.table)

    def bootstrap(self, visibility_timeout: int) -> None:
        # devstack.bootstrap builds its clients from the session: point them here.
        with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL": self.endpoint}):
            bootstrap.bootstrap(self.session, self.settings, visibility_timeout)

    def queue_url(self, dead_letters: bool = False) -> str:
        name = self.settings.dead_letter_queue if dead_letters else self.settings.queue
        return self.sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def queue_counts(self, dead_letters: bool = False) -> tuple[int, int]:
        """(visible, in flight)"""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url(dead_letters),
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attributes["ApproximateNumberOfMessages"]),
                int(attributes["ApproximateNumberOfMessagesNotVisible"]))

    def artifact_keys(self, model_id: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.settings.bucket,
                                          Prefix=f"models/{model_id}/")
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def status(self, model_id: str) -> Status | None:
        record = self.registry.get(model_id)
        return None if record is None else record.status

    def stored(self) -> tuple[set[str], dict[str, str]]:
        """Every dataset key in S3, and every item's model id and status."""
        keys = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix="datasets/"):
            keys.update(item["Key"] for item in page.get("Contents", []))
        items = {}
        for page in self.dynamodb.get_paginator("scan").paginate(
                TableName=self.settings.table, ConsistentRead=True,
                ProjectionExpression="model_id, #status",
                ExpressionAttributeNames={"#status": "status"}):
            items.update({item["model_id"]["S"]: item["status"]["S"] for item in page["Items"]})
        return keys, items

    def delete_item(self, model_id: str) -> None:
        self.dynamodb.delete_item(TableName=self.settings.table,
                                  Key={"model_id": {"S": model_id}})

    def enqueue(self, body: bytes | None, n_rows: int, n_features: int) -> TrainingMessage:
        """What POST /models does, behind its back: the dataset in S3 (none if
        `body` is None), a QUEUED item, the training message."""
        model_id, task_id = new_model_id(), str(uuid.uuid4())
        key = dataset_key(model_id)
        if body is not None:
            self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body,
                               ContentType="text/csv")
        assert self.registry.create(ModelRecord(
            model_id=model_id, task_id=task_id, status=Status.QUEUED, created_at=now_iso(),
            n_rows=n_rows, n_features=n_features, dataset_key=key))
        message = TrainingMessage(model_id, key, task_id)
        self.sqs.send_message(QueueUrl=self.queue_url(), MessageBody=message.to_json())
        return message


def _unique_names(tag: str) -> dict[str, str]:
    name = f"faults-{tag}-{uuid.uuid4().hex[:8]}"
    return {"MODELS_BUCKET": name, "MODELS_TABLE": name, "TRAINING_QUEUE": name,
            "TRAINING_DLQ": name + "-dlq", "TRAINING_MAX_RECEIVES": "3"}


def _settings(names: dict[str, str]) -> Settings:
    with mock.patch.dict(os.environ, names):
        return Settings.from_env()


@functools.cache
def _dataset(rows: int, features: int, classes: int, seed: int = 0):
    """(CSV bytes, features, labels): Gaussian blobs with integer labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    centers = rng.normal(0, 1, (classes, features))
    values = np.round(centers[labels] + rng.normal(0, 2.5, (rows, features)), 4)
    buffer = io.BytesIO()
    np.savetxt(buffer, np.column_stack([values, labels]),
               fmt=["%.4f"] * features + ["%d"], delimiter=",")
    return buffer.getvalue(), values, labels


# --- the training queue: moto's server and runner processes -------------------------

@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """One moto server for the queue scenarios; each bootstraps its own resources."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    [port] = free_ports(1)
    moto = emulator.start_moto(HOST, port, str(log))
    yield f"http://{HOST}:{port}"
    stop_process(moto, STOP_TIMEOUT)


@dataclass
class Queue:
    """One scenario's resources in the shared emulator, and its runners."""
    aws: Aws
    names: dict[str, str]
    processes: Processes
    log_dir: Path

    def start_runner(self, name: str, workers: int, lease_seconds: float,
                     extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
                     ) -> Process:
        env = _base_environment(self.aws.endpoint, **{
            **stage.stage_environment("dev"), **self.names,
            "TRAINING_LEASE_SECONDS": str(lease_seconds), **(env or {})})
        log = self.log_dir / f"{name}.log"
        runner = self.processes.spawn(
            name, [sys.executable, "-m", "devstack.sqs_runner", "--workers", str(workers),
                   *extra_args], env, log)

        def started():
            if not runner.alive():
                pytest.fail(f"{name} exited with code {runner.popen.returncode}\n"
                            f"{tail(log)}", pytrace=False)
            return _events(log, event="runner.started")

        _wait_for(started, STARTUP_TIMEOUT, f"{name} to start polling", lambda: tail(log))
        return runner

    def runner_logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("runner*.log"))

    def context(self) -> str:
        return self.processes.logs()

    def wait_until_done(self, model_id: str, timeout: float = TRAINING_TIMEOUT) -> Status:
        return _wait_for(
            lambda: (status := self.aws.status(model_id)) in (Status.READY, Status.FAILED)
            and status, timeout, f"model {model_id} to finish training", self.context)

    def wait_until_queue_empty(self, timeout: float = 30) -> None:
        _wait_for(lambda: self.aws.queue_counts() == (0, 0), timeout,
                  "the training queue to empty", self.context)


@pytest.fixture
def queue_factory(moto_endpoint, processes, tmp_path):
    def create(tag: str, visibility_timeout: int) -> Queue:
        names = _unique_names(tag)
        aws = Aws(moto_endpoint, _settings(names))
        aws.bootstrap(visibility_timeout)
        return Queue(aws, names, processes, tmp_path)
    return create


def test_trainer_killed_mid_training_trains_once_on_redelivery(queue_factory):
    queue = queue_factory("crash", visibility_timeout=4)
    first = queue.start_runner("runner-1", workers=1, lease_seconds=3)
    body, features, labels = _dataset(SLOW_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    message = queue.aws.enqueue(body, SLOW_ROWS, SLOW_FEATURES)
    model_id = message.model_id

    # Kill the trainer once it holds the model, while it reads and fits.
    started = _wait_for(lambda: _events(first.log, event="training.started", model_id=model_id),
                        30, "runner-1 to start training", queue.context, interval=0.02)
    queue.processes.kill(first)
    killed_at = time.monotonic()
    kills = [p.name for p in queue.processes.started if p.popen.returncode == -signal.SIGKILL]
    assert started[0]["receive_count"] == 1
    # Still TRAINING, nothing written: a crash leaves no half-made model.
    assert queue.aws.status(model_id) == Status.TRAINING, (
        f"the kill came too late (training already finished): raise SLOW_ROWS\n"
        f"{queue.context()}")
    assert queue.aws.artifact_keys(model_id) == []
    assert queue.aws.registry.get(model_id).public()["status"] == TRAINING

    second = queue.start_runner("runner-2", workers=1, lease_seconds=3)
    assert queue.wait_until_done(model_id) == Status.READY, queue.context()
    recovered_after = time.monotonic() - killed_at
    record_ = queue.aws.registry.get(model_id)
    assert record_.public()["status"] == READY
    assert record_.classes == list(range(SLOW_CLASSES))

    logs = queue.runner_logs()
    ready = _events(*logs, event="training.ready", model_id=model_id)
    assert len(ready) == 1, queue.context()
    assert _events(first.log, event="training.ready", model_id=model_id) == []
    [retried] = _events(second.log, event="training.started", model_id=model_id)
    assert retried["receive_count"] >= 2, retried
    queue.wait_until_queue_empty()
    assert queue.aws.queue_counts(dead_letters=True) == (0, 0)

    # Both artifacts, each signed with the service's key.
    signer = ArtifactSigner(lambda: SIGNING_KEY.encode())
    assert queue.aws.artifact_keys(model_id) == sorted(
        artifact_key(model_id, name) for name in (PIPELINE_ARTIFACT, SERVING_ARTIFACT))
    blobs = {}
    for name in (PIPELINE_ARTIFACT, SERVING_ARTIFACT):
        key = artifact_key(model_id, name)
        stored = queue.aws.s3.get_object(Bucket=queue.aws.settings.bucket, Key=key)
        blob = stored["Body"].read()
        blobs[name] = signer.verify(key, blob, stored["Metadata"].get(SIGNATURE_METADATA))
        with pytest.raises(TamperedArtifact):
            ArtifactSigner(lambda: b"another-key-0123456789abcdef").verify(
                key, blob, stored["Metadata"][SIGNATURE_METADATA])

    copies = len(blobs)
    if record_.serving is not None:  # small models also ride, signed, in their item
        assert signer.verify(artifact_key(model_id, SERVING_ARTIFACT), record_.serving,
                             record_.serving_hmac) == blobs[SERVING_ARTIFACT]
        copies += 1

    # The model predicts, and both artifacts agree.
    serving = ServingModel.from_bytes(blobs[SERVING_ARTIFACT])
    sample = slice(0, 2000)
    answer = serving.predict(features[sample])
    accuracy = float(np.mean(np.asarray(answer["predictions"]) == labels[sample]))
    assert accuracy > 2 / SLOW_CLASSES, accuracy
    pipeline = pickle.loads(blobs[PIPELINE_ARTIFACT])
    np.testing.assert_allclose(answer["prediction_probability"],
                               pipeline.predict_proba(features[sample]), rtol=1e-9, atol=1e-12)

    record("Training queue", "Trainer killed mid-training",
           f"SIGKILL the runner while it trained a {SLOW_ROWS:,} x {SLOW_FEATURES} dataset "
           "(visibility timeout 4 s, lease 3 s), then start another runner",
           len(kills), f"status stayed TRAINING with no artifact; the redelivery (receive "
              f"{retried['receive_count']}) trained it: {len(ready)} training.ready, READY "
              f"{math.ceil(recovered_after)} s after the kill, the HMACs of all {copies} "
              f"stored copies verify, "
              f"predictions {accuracy:.0%} right on training rows")


def test_poison_message_ends_in_the_dead_letter_queue_and_fails_the_model(queue_factory):
    queue = queue_factory("poison", visibility_timeout=1)
    runner = queue.start_runner("runner", workers=1, lease_seconds=30)
    # The item and the message name a dataset that is not there: NoSuchKey on
    # every receive, not a problem in the data.
    message = queue.aws.enqueue(None, 10, 4)
    model_id = message.model_id

    _wait_for(lambda: queue.aws.queue_counts(dead_letters=True)[0] == 1, 40,
              "the message to reach the dead-letter queue", queue.context)
    assert queue.aws.queue_counts() == (0, 0)
    record_ = queue.aws.registry.get(model_id)
    assert record_.status == Status.FAILED, record_
    assert record_.public()["status"] == FAILED
    assert record_.error.startswith("training failed 3 times; last error: NoSuchKey"), \
        record_.error
    assert queue.aws.artifact_keys(model_id) == []

    [dead] = queue.aws.sqs.receive_message(QueueUrl=queue.aws.queue_url(dead_letters=True),
                                           AttributeNames=["All"])["Messages"]
    assert json.loads(dead["Body"]) == json.loads(message.to_json())
    errors = _events(runner.log, event="training.error", model_id=model_id)
    receives = [entry["receive_count"] for entry in errors]
    assert receives == [1, 2, 3], queue.context()
    assert all(entry["error"].startswith("NoSuchKey") for entry in errors), errors
    # Once dead-lettered it is not tried again.
    time.sleep(1.5)
    assert len(_events(runner.log, event="training.started", model_id=model_id)) == 3

    record("Training queue", "Poison message",
           "a training message whose dataset does not exist (NoSuchKey on every receive), "
           "visibility timeout 1 s, 3 receives allowed",
           len(receives), f"tried on receives {receives}, then moved to the dead-letter queue; "
                          f"model \"{record_.public()['status']}\": "
                          f"\"{': '.join(record_.error.split(': ')[:2])}...\"")


def test_duplicate_delivery_trains_once(queue_factory):
    # The deferred duplicate comes back every visibility timeout, and is
    # dead-lettered on its third receive: the first delivery (a cold worker
    # importing scikit-learn, ~10 s on a loaded 2-core machine) must be done by then.
    visibility_timeout = 8
    queue = queue_factory("dup", visibility_timeout=visibility_timeout)
    queue.start_runner("runner", workers=2, lease_seconds=30)
    body, _, _ = _dataset(5_000, 8, 4, seed=1)
    message = queue.aws.enqueue(body, 5_000, 8)
    model_id = message.model_id
    # enqueue() sent it once; send it again at once, as SQS may.
    sent = 1 + len([queue.aws.sqs.send_message(QueueUrl=queue.aws.queue_url(),
                                               MessageBody=message.to_json())])

    assert queue.wait_until_done(model_id) == Status.READY, queue.context()
    queue.wait_until_queue_empty()
    assert queue.aws.queue_counts(dead_letters=True) == (0, 0)

    def count(event: str) -> int:
        return len(_events(*queue.runner_logs(), event=event, model_id=model_id))

    started, ready = count("training.started"), count("training.ready")
    deferred, skipped = count("training.deferred"), count("training.skipped")
    assert started == 1 and ready == 1, queue.context()
    # The second delivery found the model held or done, and once it was done,
    # was deleted without training.
    assert skipped >= 1, queue.context()
    assert queue.aws.registry.get(model_id).public()["status"] == READY

    record("Training queue", "Duplicate delivery",
           "the same training message sent twice at once to a runner with 2 workers "
           f"(lease 30 s, visibility timeout {visibility_timeout} s)",
           sent, f"trained once ({started} training.started, {ready} training.ready); the "
              f"duplicate: {deferred} training.deferred, {skipped} training.skipped; READY, "
              "queue and dead-letter queue empty")


def test_trainer_killed_on_every_delivery_marks_the_model_failed(queue_factory):
    queue = queue_factory("crashes", visibility_timeout=2)
    body, _, _ = _dataset(SLOW_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    model_id = queue.aws.enqueue(body, SLOW_ROWS, SLOW_FEATURES).model_id
    for attempt in (1, 2, 3):
        runner = queue.start_runner(f"runner-{attempt}", workers=1, lease_seconds=1)
        [started] = _wait_for(
            lambda: _events(runner.log, event="training.started", model_id=model_id),
            30, f"runner-{attempt} to start training", queue.context, interval=0.02)
        queue.processes.kill(runner)
        assert started["receive_count"] == attempt
    queue.start_runner("runner-4", workers=1, lease_seconds=1)
    _wait_for(lambda: queue.aws.queue_counts(dead_letters=True)[0] == 1, 20,
              "the message to reach the dead-letter queue", queue.context)
    assert queue.aws.registry.get(model_id).public()["status"] == FAILED


# --- the trainer's execution environment ---------------------------------------------

def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _children(pid: int, marker: str) -> list[int]:
    """Living child processes of `pid` whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z" and marker in command:
            found.append(int(entry.name))
    return found


def test_worker_killed_mid_training_costs_one_retry(queue_factory):
    queue = queue_factory("worker", visibility_timeout=4)
    runner = queue.start_runner("runner", workers=1, lease_seconds=30)
    body, _, _ = _dataset(SLOW_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    model_id = queue.aws.enqueue(body, SLOW_ROWS, SLOW_FEATURES).model_id

    _wait_for(lambda: _events(runner.log, event="training.started", model_id=model_id),
              30, "the trainer to start", queue.context, interval=0.02)
    [worker] = _children(runner.pid, "lambda_env.py")
    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
    killed_at = time.monotonic()
    [died] = _wait_for(lambda: _events(runner.log, event="runner.environment_died"), 10,
                       "the runner to see its worker die", queue.context)
    assert died["pid"] == worker and died["kind"] == "crash", died
    assert died["reason"] == "was killed by SIGKILL (signal 9)"
    assert died["error"]["errorType"] == "Runtime.ExitError"
    assert queue.aws.status(model_id) == Status.TRAINING, (
        f"the kill came too late (training already finished): raise SLOW_ROWS\n"
        f"{queue.context()}")
    assert queue.aws.artifact_keys(model_id) == []

    # The same runner takes the redelivery in a new environment.
    assert queue.wait_until_done(model_id) == Status.READY, queue.context()
    recovered_after = time.monotonic() - killed_at
    assert runner.alive()
    started = _events(runner.log, event="training.started", model_id=model_id)
    assert [entry["receive_count"] for entry in started] == [1, 2], started
    assert len(_events(runner.log, event="training.ready", model_id=model_id)) == 1
    # The item says READY before the invocation returns: wait for its report.
    queue.wait_until_queue_empty()
    [retry] = [entry for entry in _events(runner.log, event="runner.report")
               if entry["outcome"] == "ok"]
    assert retry["pid"] != worker and retry["init_ms"] is not None  # a cold start
    assert queue.aws.queue_counts(dead_letters=True) == (0, 0)

    record("Trainer execution environment", "Worker killed mid-training",
           f"SIGKILL the runner's worker process while it trained a {SLOW_ROWS:,} x "
           f"{SLOW_FEATURES} dataset (visibility timeout 4 s)", 1,
           f"the runner logged \"{died['reason']}\" and kept running; the redelivery (receive "
           f"{started[-1]['receive_count']}) trained it in a new worker: READY "
           f"{math.ceil(recovered_after)} s after the kill, once")


def test_a_training_longer_than_the_visibility_timeout_is_not_delivered_again(queue_factory):
    # AWS wants visibility >= the function's timeout; the local queue's is
    # short, so the runner keeps a running message invisible.
    queue = queue_factory("long", visibility_timeout=1)
    runner = queue.start_runner("runner", workers=2, lease_seconds=0.5)
    body, _, _ = _dataset(SLOW_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    model_id = queue.aws.enqueue(body, SLOW_ROWS, SLOW_FEATURES).model_id
    assert queue.wait_until_done(model_id) == Status.READY, queue.context()
    queue.wait_until_queue_empty()
    [report] = _events(runner.log, event="runner.report")
    seconds = report["duration_ms"] / 1000
    assert seconds > 2, "the training was too quick to tell: raise SLOW_ROWS"
    started = _events(runner.log, event="training.started", model_id=model_id)
    assert [entry["receive_count"] for entry in started] == [1], queue.context()

    record("Training queue", "Training longer than the visibility timeout",
           f"a {SLOW_ROWS:,}-row training on a queue with a 1 s visibility timeout, 2 "
           "workers and a 0.5 s lease", 1,
           f"trained once in {seconds:.1f} s, on receive 1: the runner kept the message "
           "invisible while it ran (as AWS's visibility >= timeout rule does)")


def _span(values: list[float], spec: str) -> str:
    """"1.1" or "1.1-1.3": the range of figures, once if they agree."""
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def _lost_every_time(queue: Queue, runner: Process, model_id: str, kind: str) -> list[dict]:
    """Waits until the model failed and its message was dead-lettered; returns
    the runner's environment_died events, one per receive."""
    status = _wait_for(lambda: (s := queue.aws.status(model_id)) in (Status.READY, Status.FAILED)
                       and s, 120, f"model {model_id} to finish", queue.context)
    assert status == Status.FAILED, queue.context()
    _wait_for(lambda: queue.aws.queue_counts(dead_letters=True)[0] == 1, 30,
              "the message to reach the dead-letter queue", queue.context)
    assert queue.aws.queue_counts() == (0, 0)
    assert runner.alive()
    deaths = _events(runner.log, event="runner.environment_died")
    assert [entry["receive_count"] for entry in deaths] == [1, 2, 3], queue.context()
    assert {entry["kind"] for entry in deaths} == {kind}, deaths
    assert len({entry["pid"] for entry in deaths}) == 3  # a new environment each time
    assert _events(runner.log, event="training.ready") == []
    assert queue.aws.artifact_keys(model_id) == []
    return deaths


def test_a_dataset_over_the_memory_limit_fails_the_model_saying_so(queue_factory):
    queue = queue_factory("memory", visibility_timeout=2)
    # The trainer's own memory budget would refuse this dataset before reading
    # it (tests/test_training.py). Here the trainer is told it has 3,008 MB, as
    # when its estimate is wrong, so the environment's limit is what stops it.
    runner = queue.start_runner("runner", workers=1, lease_seconds=30,
                                extra_args=("--memory-size", str(SMALL_MEMORY_MB)),
                                env={"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "3008"})
    [started] = _events(runner.log, event="runner.started")
    assert started["memory_mb"] == SMALL_MEMORY_MB and started["timeout_seconds"] == 900
    body, _, _ = _dataset(OVER_MEMORY_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    model_id = queue.aws.enqueue(body, OVER_MEMORY_ROWS, SLOW_FEATURES).model_id

    deaths = _lost_every_time(queue, runner, model_id, "out of memory")
    reached = [float(re.search(r"it reached ([\d.]+) MB", e["reason"]).group(1))
               for e in deaths]
    assert all(peak > SMALL_MEMORY_MB for peak in reached), deaths
    assert {e["error"]["errorType"] for e in deaths} == {"Runtime.OutOfMemory"}
    record_ = queue.aws.registry.get(model_id)
    assert record_.public()["status"] == FAILED
    expected = (f"training did not finish in 3 deliveries: on the last one the trainer ran "
                f"out of its {SMALL_MEMORY_MB} MB of memory (lambda_memory_size): it reached")
    assert record_.error.startswith(expected), record_.error
    assert record_.error.endswith("the training message is in the dead-letter queue")

    record("Trainer execution environment", "Dataset over the memory limit",
           f"a {len(body) / 1e6:.0f} MB CSV ({OVER_MEMORY_ROWS:,} x {SLOW_FEATURES}) for a trainer "
           f"limited to {SMALL_MEMORY_MB} MB (runner --memory-size; the deployed 3008 MB comes "
           "from .chalice/config.json), visibility timeout 2 s", len(deaths),
           f"each receive killed its worker at {_span(reached, '.0f')} MB peak RSS "
           f"(Runtime.OutOfMemory); then dead-lettered; model \"{record_.public()['status']}\": "
           f"\"{record_.error.split(': it reached')[0]}...\"")


def test_a_training_over_the_timeout_fails_the_model_saying_so(queue_factory):
    queue = queue_factory("timeout", visibility_timeout=3)
    runner = queue.start_runner("runner", workers=1, lease_seconds=30,
                                extra_args=("--timeout", str(SMALL_TIMEOUT_SECONDS)))
    body, _, _ = _dataset(LARGE_ROWS, SLOW_FEATURES, SLOW_CLASSES)
    model_id = queue.aws.enqueue(body, LARGE_ROWS, SLOW_FEATURES).model_id

    deaths = _lost_every_time(queue, runner, model_id, "timeout")
    reason = f"timed out after {SMALL_TIMEOUT_SECONDS} s (lambda_timeout)"
    assert {e["reason"] for e in deaths} == {reason}, deaths
    assert {e["error"]["errorType"] for e in deaths} == {"Sandbox.Timedout"}
    reports = [e for e in _events(runner.log, event="runner.report") if e["outcome"] == "timeout"]
    durations = [e["duration_ms"] / 1000 for e in reports]
    assert len(durations) == 3 and all(d >= SMALL_TIMEOUT_SECONDS for d in durations), reports
    record_ = queue.aws.registry.get(model_id)
    assert record_.error == (f"training did not finish in 3 deliveries: on the last one the "
                             f"trainer {reason}; the training message is in the dead-letter "
                             "queue"), record_.error

    record("Trainer execution environment", "Training over the timeout",
           f"the same {LARGE_ROWS:,}-row CSV for a trainer limited to {SMALL_TIMEOUT_SECONDS} s "
           "(runner --timeout; the deployed 900 s comes from .chalice/config.json), "
           "visibility timeout 3 s", len(deaths),
           f"each receive killed its worker after {_span(durations, '.1f')} s "
           f"(Sandbox.Timedout); then dead-lettered; model \"{record_.public()['status']}\": "
           f"\"{record_.error}\"")


# --- the stack as `make run` starts it ------------------------------------------------

@dataclass
class Stack:
    api: str
    aws: Aws
    process: subprocess.Popen  # devstack.run
    log: Path                  # its output
    http: requests.Session
    headers: dict[str, str]

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return tail(self.log)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> requests.Response:
        sent = {"Content-Type": "text/csv", **self.headers}
        if headers is not None:
            sent = {"Content-Type": "text/csv", **headers}
        return self.http.request(method, self.api + path, data=body, headers=sent,
                                 timeout=HTTP_TIMEOUT)

    def submit(self, body: bytes = IRIS) -> str:
        answer = self.request("POST", "/models", body)
        assert answer.status_code == 201, (answer.status_code, answer.text)
        return answer.json()["model_id"]

    def status(self, model_id: str) -> requests.Response:
        return self.request("GET", f"/check_model_status/{model_id}")

    def predict(self, model_id: str, body: bytes = IRIS_ROW) -> requests.Response:
        return self.request("POST", f"/models/{model_id}", body)

    def wait_until_trained(self, *model_ids: str) -> None:
        for model_id in model_ids:
            status = wait_for_training(self.http, self.api, model_id, method="GET",
                                       headers={"Content-Type": "text/csv", **self.headers},
                                       timeout=TRAINING_TIMEOUT, output=self.output)
            assert status["status"] == READY, status


def _dev_aws(endpoint: str) -> Aws:
    return Aws(endpoint, _settings(stage.stage_environment("dev")))


def _start_stack(processes: Processes, log_dir: Path, api_port: int,
                 emulator_port: int) -> Stack:
    """`python -m devstack.run` on these ports (it starts moto unless one
    answers), as one of `processes`."""
    process = processes.spawn("devstack.run", stack_command(api_port, emulator_port, log_dir),
                              _base_environment(), log_dir / "stack.log",
                              stop_signal=signal.SIGINT)
    http = requests.Session()
    http.trust_env = False  # no proxies: this is 127.0.0.1
    stack = Stack(f"http://{HOST}:{api_port}", _dev_aws(f"http://{HOST}:{emulator_port}"),
                  process.popen, process.log, http, {})
    wait_until_answering(http, stack.api, process.popen, stack.output)
    return stack


def _text_answer(answer: requests.Response) -> bool:
    return answer.headers.get("Content-Type", "").split(";")[0].strip() == "text/plain"


def test_emulator_down_answers_503_and_the_stack_recovers(processes, tmp_path):
    api_port, emulator_port = free_ports(2)
    moto_log = tmp_path / "moto.log"
    moto = processes.adopt("moto", emulator.start_moto(HOST, emulator_port, str(moto_log)),
                           moto_log)
    stack = _start_stack(processes, tmp_path, api_port, emulator_port)
    before_outage = stack.submit()
    stack.wait_until_trained(before_outage)  # not predicted: nothing cached

    processes.kill(moto)
    _wait_for(lambda: not answers(emulator_port), 5, "moto to stop answering")
    timings = {}
    for name, method, path, body in [
            ("POST /models", "POST", "/models", IRIS),
            ("GET /check_model_status", "GET", f"/check_model_status/{before_outage}", None),
            ("predict", "POST", f"/models/{before_outage}", IRIS_ROW)]:
        sent = time.monotonic()
        answer = stack.request(method, path, body)
        timings[name] = time.monotonic() - sent
        assert answer.status_code == 503, (name, answer.status_code, answer.text)
        assert answer.headers.get("Retry-After", "").isdigit(), (name, answer.headers)
        assert int(answer.headers["Retry-After"]) > 0
        assert _text_answer(answer) and answer.text.startswith(
            "The model store is unavailable right now; retry later."), (name, answer.text)
        assert timings[name] < OUTAGE_ANSWER_LIMIT, (name, timings[name])
    assert stack.alive(), stack.output()

    # The emulator comes back empty; devstack.run creates the resources again.
    restarted = processes.adopt("moto (restarted)",
                                emulator.start_moto(HOST, emulator_port, str(moto_log)),
                                moto_log)
    back_at = time.monotonic()
    refused = 0

    def submitted():
        nonlocal refused
        answer = stack.request("POST", "/models", IRIS)
        if answer.status_code == 201:
            return answer.json()["model_id"]
        assert answer.status_code == 503, (answer.status_code, answer.text)
        refused += 1
        return None

    after_outage = _wait_for(submitted, RECOVERY_LIMIT, "POST /models to work again",
                             stack.output, interval=0.25)
    recovery = time.monotonic() - back_at
    stack.wait_until_trained(after_outage)
    answer = stack.predict(after_outage)
    assert answer.status_code == 202 and answer.json()["predictions"] == ["virginica"], \
        answer.text

    # The emulator forgot the earlier model; the outage left nothing behind:
    # exactly the model submitted since, nothing SUBMITTING or half-stored.
    assert stack.status(before_outage).status_code == 404
    datasets, items = stack.aws.stored()
    assert items == {after_outage: "READY"}, items
    assert datasets == {dataset_key(after_outage)}, datasets
    submitted_ids = {entry["model_id"] for entry in _events(stack.log)
                     if entry.get("event", "").startswith("submit.")}
    assert submitted_ids == {before_outage, after_outage}, submitted_ids
    # The ids refused submissions had drawn (their errors name the dataset key): none exists.
    refused_ids = {found for entry in _events(stack.log, event="aws.unavailable")
                   if entry.get("handler") == "create_model"
                   for found in MODEL_ID.findall(entry.get("error", ""))}
    for model_id in refused_ids:
        assert stack.status(model_id).status_code == 404, model_id
    _wait_for(lambda: stack.aws.queue_counts() == (0, 0), 30, "the queue to empty", stack.output)
    assert stack.aws.queue_counts(dead_letters=True) == (0, 0)
    assert restarted.alive()

    slowest = max(timings.values())
    record("Availability", "Emulator (AWS) down",
           "SIGKILL moto under a running devstack.run, then POST /models, "
           "GET /check_model_status, predict", len(timings),
           f"each 503 with Retry-After and a text body, slowest in {slowest:.1f} s "
           f"(limit {OUTAGE_ANSWER_LIMIT} s); the stack kept running")
    record("Availability", "Emulator back, empty",
           "start moto again on the same port with no state, retry POST /models until it "
           "works, train and predict", refused + 1,
           f"201 after {recovery:.1f} s ({refused} 503s meanwhile); trained and predicted; "
           f"the model from before and the ids the {len(refused_ids)} refused submission(s) "
           "named in the log answer 404; no item or dataset left behind")


def test_emulator_hung_answers_503_within_seconds(processes, tmp_path):
    api_port, emulator_port = free_ports(2)
    moto_log = tmp_path / "moto.log"
    moto = processes.adopt("moto", emulator.start_moto(HOST, emulator_port, str(moto_log)),
                           moto_log)
    endpoint = f"http://{HOST}:{emulator_port}"
    server = processes.spawn(
        "devstack.server", [sys.executable, "-m", "devstack.server", "--port", str(api_port)],
        _base_environment(endpoint), tmp_path / "server.log")
    _wait_for(lambda: answers(api_port), STARTUP_TIMEOUT,
              "the API server to listen", lambda: tail(server.log))
    http = requests.Session()
    http.trust_env = False
    # Stopped, moto's listening socket still completes handshakes: a hung endpoint.
    moto.popen.send_signal(signal.SIGSTOP)
    try:
        sent = time.monotonic()
        try:
            answer = http.get(f"http://{HOST}:{api_port}/check_model_status/{UNKNOWN_ID}",
                              timeout=OUTAGE_ANSWER_LIMIT + 1)
        except requests.Timeout:
            answer = None
        elapsed = time.monotonic() - sent
        assert answer is not None, f"no answer within {elapsed:.1f} s"
        assert answer.status_code == 503 and "Retry-After" in answer.headers, answer.text
        assert elapsed < OUTAGE_ANSWER_LIMIT, elapsed
    finally:
        moto.popen.send_signal(signal.SIGCONT)
        http.close()


def _said(stack: Stack, pattern: str) -> re.Match | None:
    """devstack.run's own (not JSON) log line matching `pattern`."""
    for line in stack.log.read_text(errors="replace").splitlines():
        if not line.startswith("{") and (match := re.search(pattern, line)):
            return match
    return None


# Under the 5.94 MB a POST /models body may take (about 5 MB), and long enough to
# train that the kill lands mid-training.
STACK_ROWS = 22_000


def test_make_run_restarts_a_dead_trainer_and_api_server(processes, tmp_path):
    api_port, emulator_port = free_ports(2)
    stack = _start_stack(processes, tmp_path, api_port, emulator_port)
    run_pid = stack.process.pid
    body, _, _ = _dataset(STACK_ROWS, SLOW_FEATURES, SLOW_CLASSES, seed=3)
    model_id = stack.submit(body)

    # The trainer dies mid-training (the runner, and with it its worker).
    _wait_for(lambda: _events(stack.log, event="training.started", model_id=model_id), 60,
              "training to start", stack.output, interval=0.02)
    [runner] = _children(run_pid, "devstack.sqs_runner --workers")  # the trainer's, not run_batch's
    [worker] = _children(runner, "lambda_env.py")
    os.kill(runner, signal.SIGKILL)
    # The API answers all along; the model says "training" until the redelivery trains it.
    answers = []

    def trained():
        answer = stack.status(model_id)
        answers.append(answer.status_code)
        assert answer.status_code == 200, (answer.status_code, answer.text)
        return answer.json()["status"] != TRAINING and answer.json()

    status = _wait_for(trained, TRAINING_TIMEOUT, "the model to finish after the trainer died",
                       stack.output, interval=0.25)
    assert status["status"] == READY, status
    assert _wait_for(lambda: _gone(worker), 10, "the dead runner's worker to exit")
    died = _said(stack, rf"The trainer \(devstack.sqs_runner\), pid {runner}, was killed by "
                        r"SIGKILL \(signal 9\)\. A training it was running comes back after")
    restarted = _said(stack, r"The trainer \(devstack.sqs_runner\) started again, pid (\d+)")
    assert died and restarted, stack.output()
    [new_runner] = _children(run_pid, "devstack.sqs_runner --workers")  # the trainer's, not run_batch's
    assert int(restarted.group(1)) == new_runner != runner
    started = _events(stack.log, event="training.started", model_id=model_id)
    assert [entry["receive_count"] for entry in started] == [1, 2], started

    # The API server dies; it is started again, and the emulator kept the model.
    [api] = _children(run_pid, "devstack.server")
    os.kill(api, signal.SIGKILL)
    killed_at = time.monotonic()

    def answering():
        try:
            return stack.predict(model_id, ",".join(["0"] * SLOW_FEATURES).encode() + b"\n")
        except requests.ConnectionError:
            return None

    predicted = _wait_for(answering, 30, "the API to answer again", stack.output,
                          interval=0.2)
    back_after = time.monotonic() - killed_at
    assert predicted.status_code == 202, predicted.text
    assert _said(stack, rf"The API server \(devstack.server\), pid {api}, was killed by SIGKILL")
    assert _said(stack, r"The API server \(devstack.server\) started again")
    assert stack.alive()

    record("Availability", "Trainer killed under make run",
           f"SIGKILL devstack.sqs_runner (and so its worker) while it trained a {STACK_ROWS:,}-row "
           "model, asking the model's status every 0.25 s", len(answers),
           f"devstack.run said it died and started it again; every status answer 200; the "
           f"redelivery (receive {started[-1]['receive_count']}) made the model READY")
    record("Availability", "API server killed under make run",
           "SIGKILL devstack.server, then predict until it answers", 1,
           f"devstack.run said it died and started it again; 202 with the model trained "
           f"before, {back_after:.1f} s after the kill")


def test_make_run_restarts_its_dead_emulator_and_the_api_says_503_meanwhile(processes,
                                                                            tmp_path):
    api_port, emulator_port = free_ports(2)
    stack = _start_stack(processes, tmp_path, api_port, emulator_port)
    run_pid = stack.process.pid
    before = stack.submit()
    stack.wait_until_trained(before)
    [moto] = _children(run_pid, "devstack.moto_server")

    # Held still, devstack.run cannot restart the emulator yet: what does the API say?
    os.kill(run_pid, signal.SIGSTOP)
    try:
        os.kill(moto, signal.SIGKILL)
        _wait_for(lambda: not answers(emulator_port), 10, "moto to stop answering")
        outage = [stack.request("POST", "/models", IRIS), stack.status(before),
                  stack.predict(before)]
    finally:
        os.kill(run_pid, signal.SIGCONT)
    for answer in outage:
        assert answer.status_code == 503, (answer.status_code, answer.text)
        assert int(answer.headers.get("Retry-After", "0")) > 0, answer.headers
        assert answer.text.startswith("The model store is unavailable right now"), answer.text
    resumed = time.monotonic()

    def submitted():
        answer = stack.request("POST", "/models", IRIS)
        assert answer.status_code in (201, 503), (answer.status_code, answer.text)
        return answer.status_code == 201 and answer.json()["model_id"]

    after = _wait_for(submitted, 60, "POST /models to work again", stack.output, interval=0.25)
    recovered = time.monotonic() - resumed
    stack.wait_until_trained(after)
    assert stack.status(before).status_code == 404  # the emulator's memory went with it
    died = _said(stack, rf"The emulator \(moto server\), pid {moto}, was killed by SIGKILL "
                        r"\(signal 9\)\. Its state lived in memory: every model is gone")
    back = _said(stack, r"The emulator is back on \S+, empty: bucket, table and queues "
                        "created again")
    assert died and back, stack.output()
    [new_moto] = _children(run_pid, "devstack.moto_server")
    assert new_moto != moto and stack.alive()

    record("Availability", "Emulator started by make run killed",
           "SIGKILL the moto server devstack.run started (devstack.run held with SIGSTOP "
           "meanwhile), then POST /models, GET /check_model_status, predict; then let "
           "devstack.run go on", len(outage),
           f"{'/'.join(sorted({str(a.status_code) for a in outage}))} with Retry-After each "
           f"time; devstack.run said the emulator died and its models were gone, started it "
           f"again and created the resources: POST /models worked {recovered:.1f} s later and "
           "trained")


API_KEYS = ("k1", "k2")


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory):
    """devstack.run with API keys required and a 1 s recheck interval."""
    env = {"MODEL_SIGNING_KEY": SIGNING_KEY, "MODEL_RECHECK_SECONDS": "1",
           "REQUIRE_API_KEY": "true", "API_KEYS": ",".join(API_KEYS)}
    with running_stack(tmp_path_factory.mktemp("keyed-stack"), env=env) as running:
        yield Stack(running.api, _dev_aws(running.endpoint), running.process,
                    running.output_path, running.http, {"X-Api-Key": API_KEYS[0]})


def _wide_dataset(labels: tuple[str, ...], seed: int) -> tuple[bytes, bytes]:
    """(training CSV, one feature row) for a model whose serving arrays are too
    large to ride in its DynamoDB item (training.EMBED_LIMIT_BYTES): predict
    then reads serving.npz from S3."""
    limit = getattr(training, "EMBED_LIMIT_BYTES", 0)
    # coef (classes x features), mean and scale (features), 8 bytes each
    features = max(8, math.ceil(1.25 * limit / (8 * (len(labels) + 2))))
    rng = np.random.default_rng(seed)
    lines = []
    for index, label in enumerate(labels):
        values = rng.normal(index * 2.0, 1.0, (10, features))
        lines += [",".join(f"{v:.3f}" for v in row) + f",{label}" for row in values]
    row = ",".join(f"{v:.3f}" for v in rng.normal(0.0, 1.0, features))
    return ("\n".join(lines) + "\n").encode(), (row + "\n").encode()


def _train_wide(stack: Stack, labels: tuple[str, ...], seed: int) -> tuple[str, bytes]:
    """A ready model served from serving.npz in S3; (model id, a feature row)."""
    body, row = _wide_dataset(labels, seed)
    model_id = stack.submit(body)
    stack.wait_until_trained(model_id)
    assert stack.aws.registry.get(model_id).serving is None, \
        "the model rides in its item: make _wide_dataset wider"
    return model_id, row


def test_lost_status_item_and_missing_artifact_are_4xx(keyed_stack):
    stack = keyed_stack
    lost = stack.submit()
    missing, row = _train_wide(stack, ("a", "b", "c"), seed=2)
    stack.wait_until_trained(lost)
    answers = []

    # A warm cache must notice that the item went away.
    answers.append(warm := stack.predict(lost))
    assert warm.status_code == 202, warm.text
    stack.aws.delete_item(lost)
    deleted_at = time.monotonic()
    time.sleep(max(0.0, deleted_at + 1.5 - time.monotonic()))  # past MODEL_RECHECK_SECONDS=1
    gone = [stack.predict(lost), stack.status(lost),
            stack.request("POST", f"/check_model_status/{lost}")]
    for answer in gone:
        assert answer.status_code == 404, (answer.status_code, answer.text)
        assert _text_answer(answer) and answer.text == MODEL_NOT_FOUND
    answers += gone

    # serving.npz gone from a model never loaded here.
    stack.aws.s3.delete_object(Bucket=stack.aws.settings.bucket,
                               Key=artifact_key(missing, SERVING_ARTIFACT))
    refused = []
    for _ in range(2):  # and nothing is cached on the way
        answer = stack.predict(missing, row)
        refused.append(answer)
        assert answer.status_code == 409, (answer.status_code, answer.text)
        assert _text_answer(answer)
        assert f"its artifact models/{missing}/serving.npz is missing" in answer.text, answer.text
    answers += refused
    status = stack.status(missing)
    answers.append(status)
    assert status.status_code == 200 and status.json()["status"] == READY
    assert all(answer.status_code < 500 for answer in answers), \
        [(answer.status_code, answer.text) for answer in answers]

    record("Storage consistency", "Status item deleted",
           "deleted a ready, cached model's DynamoDB item, then after the 1 s recheck "
           "interval predicted and asked its status (GET and POST)", len(gone),
           f"{'/'.join(sorted({str(a.status_code) for a in gone}))} with the seed's text "
           "each time; no 5xx")
    record("Storage consistency", "Artifact deleted",
           "deleted serving.npz of a ready model never loaded (too large to ride in its "
           "item), then predicted", len(refused),
           f"{refused[0].status_code} \"{refused[0].text.split(';')[0].replace(missing, '<id>')}\" "
           f"each time; status still \"{status.json()['status']}\"; no 5xx")


def _tamper_object(stack: Stack, model_id: str, blob: bytes, signature: str | None) -> None:
    stack.aws.s3.put_object(Bucket=stack.aws.settings.bucket,
                            Key=artifact_key(model_id, SERVING_ARTIFACT), Body=blob,
                            Metadata={} if signature is None else {SIGNATURE_METADATA: signature},
                            ContentType="application/octet-stream")


def _tamper_item(stack: Stack, model_id: str, blob: bytes, signature: str | None) -> None:
    update = "SET serving = :blob" + (", serving_hmac = :hmac" if signature else
                                       " REMOVE serving_hmac")
    values = {":blob": {"B": blob}}
    if signature:
        values[":hmac"] = {"S": signature}
    stack.aws.dynamodb.update_item(TableName=stack.aws.settings.table,
                                   Key={"model_id": {"S": model_id}},
                                   UpdateExpression=update, ExpressionAttributeValues=values)


def _forged(genuine: bytes) -> bytes:
    """Other bytes that are still a valid serving artifact: one coefficient changed."""
    model = ServingModel.from_bytes(genuine)
    coef = model.coef.copy()
    coef[0, 0] += 1.0
    return ServingModel(model.classes, model.mean, model.scale, coef, model.intercept).to_bytes()


def test_tampered_artifact_is_refused_over_http(keyed_stack):
    stack = keyed_stack
    in_s3, row = _train_wide(stack, ("a", "b", "c"), seed=3)
    in_item = stack.submit()  # iris: small enough to ride in its DynamoDB item too
    stack.wait_until_trained(in_item)
    key = artifact_key(in_s3, SERVING_ARTIFACT)
    original = stack.aws.s3.get_object(Bucket=stack.aws.settings.bucket, Key=key)
    genuine, signature = original["Body"].read(), original["Metadata"][SIGNATURE_METADATA]

    cases = [("serving.npz", in_s3, row, _tamper_object, genuine, signature)]
    embedded = stack.aws.registry.get(in_item)
    if embedded.serving is not None:
        cases.append(("the item's embedded copy", in_item, IRIS_ROW, _tamper_item,
                      embedded.serving, embedded.serving_hmac))
    outcomes = []
    for where, model_id, features, tamper, blob, blob_signature in cases:
        for kept in (True, False):  # the genuine signature kept, then dropped
            tamper(stack, model_id, _forged(blob), blob_signature if kept else None)
            answer = stack.predict(model_id, features)
            assert answer.status_code == 409, (where, kept, answer.status_code, answer.text)
            assert _text_answer(answer) and "integrity check" in answer.text, answer.text
            assert model_id in answer.text
            outcomes.append(f"{where}, signature {'kept' if kept else 'dropped'}: "
                            f"{answer.status_code} "
                            f"({'mismatch' if 'mismatch' in answer.text else 'missing'})")
        # Put back, it serves again: the refusals were about the bytes.
        tamper(stack, model_id, blob, blob_signature)
        restored = stack.predict(model_id, features)
        assert restored.status_code == 202, (where, restored.text)
    logged = _events(stack.log, event="artifact.tampered")
    assert len([e for e in logged if e["model_id"] in (in_s3, in_item)]) == len(outcomes)

    record("Artifact integrity", "Tampered serving arrays",
           "replaced a ready, never-loaded model's serving arrays with a modified but valid "
           "npz, keeping and then dropping the HMAC, and predicted over HTTP "
           f"({', '.join(case[0] for case in cases)})",
           len(outcomes), "; ".join(outcomes) + "; each answer names the integrity check and "
           "is logged as artifact.tampered; the genuine bytes put back serve again")


def test_artifact_swapped_from_another_model_is_refused(keyed_stack):
    stack = keyed_stack
    victim, row = _train_wide(stack, ("a", "b", "c"), seed=4)
    other, _ = _train_wide(stack, ("x", "y", "z"), seed=5)
    bucket = stack.aws.settings.bucket
    # Whoever can write to the bucket copies one model's signed artifact over another's.
    stack.aws.s3.copy_object(Bucket=bucket, Key=artifact_key(victim, SERVING_ARTIFACT),
                             CopySource={"Bucket": bucket,
                                         "Key": artifact_key(other, SERVING_ARTIFACT)},
                             MetadataDirective="COPY")
    answer = stack.predict(victim, row)
    assert answer.status_code == 409 or \
        set(answer.json()["predictions"]) <= {"a", "b", "c"}, answer.text


def test_api_keys_on_the_local_stack(keyed_stack):
    stack = keyed_stack
    # 2xx with either key.
    model_id = stack.submit()
    stack.wait_until_trained(model_id)
    valid = [stack.predict(model_id),
             stack.request("GET", f"/check_model_status/{model_id}",
                           headers={"X-Api-Key": API_KEYS[1]}),
             stack.request("POST", f"/models/{model_id}", IRIS_ROW,
                           headers={"X-Api-Key": API_KEYS[1]})]
    assert [answer.status_code for answer in valid] == [202, 200, 202], \
        [(answer.status_code, answer.text) for answer in valid]

    routes = [("POST", "/models", IRIS),
              ("POST", f"/models/{model_id}", IRIS_ROW),
              ("GET", f"/models/{UNKNOWN_ID}", IRIS_ROW),
              ("GET", f"/check_model_status/{model_id}", None),
              ("POST", f"/check_model_status/{UNKNOWN_ID}", None)]
    _, items_before = stack.aws.stored()
    refusals: dict[str, list[requests.Response]] = {"none": [], "wrong": []}
    for method, path, body in routes:
        refusals["none"].append(stack.request(method, path, body, headers={}))
        for wrong in ("k3", "K1", "k1k2", "k1,k2"):
            refusals["wrong"].append(stack.request(method, path, body,
                                                   headers={"X-Api-Key": wrong}))
    for kind, status in (("none", 401), ("wrong", 403)):
        answers = refusals[kind]
        assert {answer.status_code for answer in answers} == {status}, \
            [(answer.status_code, answer.text) for answer in answers]
        # The same text for every route, and for existing and unknown ids.
        assert len({answer.text for answer in answers}) == 1, {a.text for a in answers}
        assert all(_text_answer(answer) for answer in answers)
    _, items_after = stack.aws.stored()
    assert items_after.keys() == items_before.keys()  # refused submissions stored nothing

    record("Access control", "No API key",
           "each route (train, predict and status on an existing and an unknown id) "
           "without X-Api-Key, on devstack.run with REQUIRE_API_KEY=true",
           len(refusals["none"]), f"401 \"{refusals['none'][0].text}\" every time, the same "
                                  "for existing and unknown ids; nothing stored")
    record("Access control", "Wrong API key",
           "each route with 4 wrong keys (unknown, wrong case, two keys joined)",
           len(refusals["wrong"]), f"403 \"{refusals['wrong'][0].text}\" every time, the "
                                   "same for existing and unknown ids")
    record("Access control", "Valid API keys",
           "train, status and predict with each of the 2 configured keys", len(valid) + 1,
           "201, then " + ", ".join(str(answer.status_code) for answer in valid))
