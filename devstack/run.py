"""`make run`: the whole stack on this machine.

Starts the emulator on 127.0.0.1:4566 (EMULATOR_PORT): moto's server, or with
EMULATOR=localstack (--emulator localstack) LocalStack without Docker
(devstack.localstack; a LocalStack the user runs, named by LOCALSTACK_HOST, is
used as it is). Whatever AWS emulator already answers on the port is used
instead. Then it creates the bucket, table and queues, then
runs the API server and the SQS event-source runner. A process that dies is
started again and the log says so (devstack.supervisor); an emulator that
comes back empty gets its resources again. Ctrl-C stops everything this
started.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws
from chalicelib.config import Settings
from devstack import bootstrap, emulator, stage
from devstack.ports import answers
from devstack.supervisor import Child, StackFailed, Supervisor, say

HOST = "127.0.0.1"
RESOURCE_CHECK_SECONDS = 2


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode} before it answered")
        if answers(port):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer on {HOST}:{port} within {timeout:.0f} s")


class EmulatorWatch:
    """Says when the emulator stops answering and when it is back, and creates
    the resources again when it comes back empty (its state lives in memory),
    so the API works again without a restart."""

    def __init__(self, session, settings: Settings, visibility_timeout: int, endpoint: str,
                 upload_origins: list[str]):
        self._session = session
        self._settings = settings
        self._visibility_timeout = visibility_timeout
        self._endpoint = endpoint
        self._upload_origins = upload_origins
        self._s3 = session.client("s3", config=aws.CLIENT_CONFIG)
        self.down = False

    def check(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self._settings.bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                return
            self._back()
            if self.recreate():
                say("The emulator lost its state (restarted?): bucket, table and queues "
                    "created again; earlier models are gone.")
            return
        except BotoCoreError:
            if not self.down:
                say(f"The emulator at {self._endpoint} does not answer: the API answers 503 "
                    "with Retry-After until it is back.")
                self.down = True
            return
        self._back()

    def _back(self) -> None:
        if self.down:
            say(f"The emulator at {self._endpoint} answers again.")
            self.down = False

    def recreate(self) -> bool:
        """Creates the bucket, table and queues; False (said) if that failed."""
        try:
            bootstrap.bootstrap(self._session, self._settings, self._visibility_timeout,
                                upload_origins=self._upload_origins)
        except (BotoCoreError, ClientError) as failure:  # down again: try at the next check
            say(f"Recreating the resources failed ({failure}); trying again.")
            return False
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")),
                        help="API port (PORT)")
    parser.add_argument("--emulator", choices=emulator.KINDS, default=emulator.kind_from_env(),
                        help="the AWS emulator to start (EMULATOR; default moto)")
    parser.add_argument("--emulator-port", type=int,
                        default=int(os.environ.get("EMULATOR_PORT", stage.DEFAULT_EMULATOR_PORT)))
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("RUNNER_WORKERS", os.cpu_count() or 1)),
                        help="training messages processed at once")
    parser.add_argument("--visibility-timeout", type=int,
                        default=int(os.environ.get("TRAINING_VISIBILITY_TIMEOUT", "60")),
                        help="seconds before an unfinished training message is redelivered")
    parser.add_argument("--log-dir", default=os.environ.get("DEVSTACK_LOG_DIR", ".devstack"))
    args = parser.parse_args()

    if answers(args.port):
        raise SystemExit(f"port {args.port} is already in use; set PORT to serve the API elsewhere")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    chosen = emulator.Emulator(args.emulator, HOST, args.emulator_port, log_dir)
    endpoint = chosen.endpoint
    users_localstack = None
    if args.emulator == "localstack":
        from devstack import localstack

        users_localstack = localstack.user_endpoint()
        if users_localstack:
            endpoint = users_localstack
            if localstack.health(endpoint) is None:
                raise SystemExit(f"LOCALSTACK_HOST={os.environ['LOCALSTACK_HOST']} names a "
                                 f"LocalStack, but none answers at {endpoint}; start it, or "
                                 "unset LOCALSTACK_HOST to have one started here")
    supervisor = Supervisor()
    watch: EmulatorWatch | None = None
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    def emulator_back() -> None:
        if watch is not None and watch.recreate():
            say(f"The emulator is back on {endpoint}, empty: bucket, table and queues "
                "created again.")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if users_localstack:
            print(f"Emulator: {endpoint} (your LocalStack, from LOCALSTACK_HOST)", flush=True)
        elif answers(args.emulator_port):
            print(f"Emulator: {endpoint} (already running: {emulator.describe(endpoint)})",
                  flush=True)
        else:
            started = time.monotonic()
            try:
                supervisor.start(Child(
                    f"The emulator ({chosen.title})", chosen.start,
                    consequence="Its state lived in memory: every model is gone. Starting it "
                                "again; meanwhile the API answers 503 with Retry-After.",
                    after_restart=emulator_back, stop=chosen.stop))
            except RuntimeError as failure:  # it did not start: said how
                raise SystemExit(f"The emulator ({chosen.title}) did not start: {failure}")
            print(f"Emulator: {endpoint} ({chosen.title} started here in "
                  f"{time.monotonic() - started:.1f} s; state in memory, log {chosen.log_path})",
                  flush=True)
        stage.apply(args.stage, endpoint)
        session = boto3.session.Session()
        # The lease must end before the message comes back, or a redelivery
        # after a crash would find it still held.
        os.environ.setdefault("TRAINING_LEASE_SECONDS", str(max(1, args.visibility_timeout - 1)))
        os.environ.setdefault("BATCH_LEASE_SECONDS", str(max(1, args.visibility_timeout - 1)))
        settings = Settings.from_env()
        # The dashboard, served by the API, sends upload forms to the emulator.
        origins = list(settings.upload_origins) or [f"http://{HOST}:{args.port}",
                                                    f"http://localhost:{args.port}"]
        bootstrap.bootstrap(session, settings, args.visibility_timeout, upload_origins=origins)
        watch = EmulatorWatch(session, settings, args.visibility_timeout, endpoint, origins)
        print(f"Resources: bucket {settings.bucket}, table {settings.table}, "
              f"queue {settings.queue} (dead letters: {settings.dead_letter_queue})", flush=True)

        python = [sys.executable, "-m"]
        common = ["--stage", args.stage]

        def child(*command: str) -> subprocess.Popen:
            # Own process groups: Ctrl-C reaches only this process, which then
            # stops the children in order (API and runner first, the emulator last).
            return subprocess.Popen(python + [*command, *common], cwd=stage.PROJECT_DIR,
                                    process_group=0)

        supervisor.start(Child(
            "The trainer (devstack.sqs_runner)",
            lambda: child("devstack.sqs_runner", "--workers", str(args.workers)),
            consequence="A training it was running comes back after the queue's visibility "
                        f"timeout ({args.visibility_timeout} s)."))
        supervisor.start(Child(
            "The batch runner (devstack.sqs_runner --function run_batch)",
            lambda: child("devstack.sqs_runner", "--function", "run_batch",
                          "--workers", str(args.workers)),
            consequence="A batch it was running resumes from its last part after the "
                        f"queue's visibility timeout ({args.visibility_timeout} s)."))
        # EventBridge's schedules (the sweep of expired models);
        # SCHEDULE_INTERVAL_SECONDS shortens them.
        supervisor.start(Child(
            "The scheduler (devstack.scheduler)", lambda: child("devstack.scheduler"),
            consequence="A sweep it was running is finished by the next one."))
        api = supervisor.start(Child(
            "The API server (devstack.server)",
            lambda: child("devstack.server", "--port", str(args.port))))
        _wait_for_port(args.port, api.process, "the API server")
        print(f"Dashboard: http://{HOST}:{args.port}/", flush=True)
        print(f"Ready. Try: curl -X POST -H 'Content-Type: text/csv' --data-binary @iris.csv "
              f"http://{HOST}:{args.port}/models   (Ctrl-C stops everything)", flush=True)
        next_check = time.monotonic() + RESOURCE_CHECK_SECONDS
        while not stopping:
            supervisor.check()
            if time.monotonic() > next_check:
                watch.check()
                next_check = time.monotonic() + RESOURCE_CHECK_SECONDS
            time.sleep(0.2)
    except StackFailed as failure:
        say(str(failure))
        raise SystemExit(1) from None
    finally:
        supervisor.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
