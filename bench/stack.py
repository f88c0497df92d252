"""What every benchmark needs: the environment, the processes started (and
always stopped), moto's server with the app's resources, and one model trained
on iris.csv through the app's own routes and SQS handler.

Only public surfaces of the app are used (HTTP routes, the `train_model`
handler, S3 keys as documented), so the harness survives changes inside
chalicelib/.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.ports import answers, free_ports, stop_process, tail  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REGION = "us-east-1"
STAGE = "dev"
IRIS_PATH = REPO / "iris.csv"
SEED_ROW = b"6.9,3.1,5.1,2.3"   # the README's example row: virginica
SEED_LABEL = "virginica"
CSV_HEADERS = {"Content-Type": "text/csv"}
STOP_TIMEOUT = 10.0

# Variables that would send the app or boto3 somewhere else than the emulator.
_UNWANTED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_SECURITY_TOKEN",
             "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS",
             "PORT", "EMULATOR_PORT")


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The variables the app reads: the dev stage's names and the emulator."""
    from devstack import stage

    env = dict(stage.stage_environment(STAGE))
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION)
    return env


def apply_environment(endpoint: str) -> None:
    """Points this process at the emulator (before chalicelib builds a client):
    the variables above, forced, then whatever else devstack's stage.apply sets
    up for a local stack (it keeps what is already set)."""
    from devstack import stage

    for name in _UNWANTED:
        os.environ.pop(name, None)
    os.environ.update(aws_environment(endpoint))
    stage.apply(STAGE, endpoint)


def child_environment(endpoint: str) -> dict[str, str]:
    """This process's environment once pointed at the emulator, for children."""
    apply_environment(endpoint)
    return os.environ.copy()


class Processes:
    """Every long-running process the benchmarks start; stopped in reverse
    order on exit, whatever happened. Each runs in its own process group so
    that Ctrl-C reaches only the harness, which then stops them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._running: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_path(name), "wb") as log:
            process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, process_group=0)
        self._running.append((name, process))
        return process

    def adopt(self, name: str, process: subprocess.Popen) -> None:
        self._running.append((name, process))

    def stop(self, process: subprocess.Popen) -> None:
        self._running = [(n, p) for n, p in self._running if p is not process]
        _stop(process)

    def stop_all(self) -> None:
        while self._running:
            _, process = self._running.pop()
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    stop_process(process, STOP_TIMEOUT)
    # Anything it left in its own process group (the group is the one we created).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path,
                  timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it "
                               f"answered on port {port}:\n{tail(log)}")
        if answers(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on {HOST}:{port} within {timeout:.0f} s:\n"
                       f"{tail(log)}")


def start_emulator(processes: Processes) -> str:
    """moto's server on a free port, with the app's bucket, table and queues."""
    import boto3

    from chalicelib.config import Settings
    from devstack import bootstrap, emulator

    [port] = free_ports(1)
    log = processes.log_path("moto")
    processes.adopt("moto", emulator.start_moto(HOST, port, str(log)))
    endpoint = f"http://{HOST}:{port}"
    apply_environment(endpoint)
    bootstrap.bootstrap(boto3.session.Session(), Settings.from_env(), visibility_timeout=60)
    return endpoint


def test_client():
    """chalice.test.Client on the app, with the project's .chalice/config.json."""
    from chalice.test import Client

    import app

    return Client(app.app, stage_name=STAGE, project_dir=str(REPO))


def train_iris(timeout: float = 60.0) -> str:
    """POST /models with iris.csv, then runs the app's `train_model` handler on
    the message the route queued (as Lambda's event source mapping would), and
    waits until the model is "Ready to Use". Returns its id."""
    import boto3

    from devstack.sqs_runner import lambda_event

    client = test_client()
    created = client.http.post("/models", headers=dict(CSV_HEADERS), body=IRIS_PATH.read_bytes())
    if created.status_code != 201:
        raise RuntimeError(f"POST /models answered {created.status_code}: "
                           f"{created.body[:500]!r}")
    model_id = json.loads(created.body)["model_id"]

    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.get_queue_url(QueueName=os.environ["TRAINING_QUEUE"])["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    deadline = time.monotonic() + timeout
    handled = False
    while not handled and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1, AttributeNames=["All"],
                                       MessageAttributeNames=["All"]).get("Messages", [])
        for message in messages:
            if json.loads(message["Body"]).get("model_id") != model_id:
                continue
            client.lambda_.invoke("train_model", lambda_event(message, queue_arn, REGION))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            handled = True
    if not handled:
        raise RuntimeError(f"no training message for {model_id} within {timeout:.0f} s")

    status = {}
    while time.monotonic() < deadline:
        answer = client.http.get(f"/check_model_status/{model_id}")
        status = json.loads(answer.body) if answer.status_code == 200 else {}
        if status.get("status") == "Ready to Use":
            return model_id
        if status.get("status") == "Training Failed":
            break
        time.sleep(0.2)
    raise RuntimeError(f"model {model_id} is not ready: {status}")


def model_pickle(model_id: str) -> bytes:
    """models/{id}/model.pkl from the emulator: the pickled scikit-learn pipeline."""
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    return s3.get_object(Bucket=os.environ["MODELS_BUCKET"],
                         Key=f"models/{model_id}/model.pkl")["Body"].read()


def load_pipeline(model_id: str):
    return pickle.loads(model_pickle(model_id))
