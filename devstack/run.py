"""`make run`: the whole stack on this machine.

Starts moto's server on 127.0.0.1:4566 (or uses whatever AWS emulator already
answers there, e.g. LocalStack), creates the bucket, table and queues, then
runs the API server and the SQS event-source runner. Ctrl-C stops everything
this started.
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
from devstack.ports import answers, stop_process

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


def _recreate_lost_resources(s3, session, settings: Settings, visibility_timeout: int,
                             upload_origins: list[str]) -> None:
    """An emulator that restarted comes back empty (its state lives in memory):
    create the resources again so the API works without a restart."""
    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            return
        try:
            bootstrap.bootstrap(session, settings, visibility_timeout,
                                upload_origins=upload_origins)
        except (BotoCoreError, ClientError) as failure:  # down again: try at the next check
            print(f"Recreating the resources failed ({failure}); trying again.",
                  file=sys.stderr, flush=True)
            return
        print("The emulator lost its state (restarted?): bucket, table and queues created "
              "again; earlier models are gone.", file=sys.stderr, flush=True)
    except BotoCoreError:
        pass  # down: the API answers 503 until it is back


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stops in reverse start order: the API and runner before the emulator."""
    for process in reversed(processes):
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")),
                        help="API port (PORT)")
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
    endpoint = f"http://{HOST}:{args.emulator_port}"
    processes: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if answers(args.emulator_port):
            print(f"Emulator: {endpoint} (already running: {emulator.describe(endpoint)})",
                  flush=True)
        else:
            moto_log = log_dir / "moto.log"
            processes.append(emulator.start_moto(HOST, args.emulator_port, str(moto_log)))
            print(f"Emulator: {endpoint} (moto server started here; state in memory, "
                  f"log {moto_log})", flush=True)
        stage.apply(args.stage, endpoint)
        session = boto3.session.Session()
        # The lease must end before the message comes back, or a redelivery
        # after a crash would find it still held.
        os.environ.setdefault("TRAINING_LEASE_SECONDS", str(max(1, args.visibility_timeout - 1)))
        settings = Settings.from_env()
        # The dashboard, served by the API, sends upload forms to the emulator.
        origins = list(settings.upload_origins) or [f"http://{HOST}:{args.port}",
                                                    f"http://localhost:{args.port}"]
        bootstrap.bootstrap(session, settings, args.visibility_timeout, upload_origins=origins)
        print(f"Resources: bucket {settings.bucket}, table {settings.table}, "
              f"queue {settings.queue} (dead letters: {settings.dead_letter_queue})", flush=True)

        python = [sys.executable, "-m"]
        common = ["--stage", args.stage]
        # Own process groups: Ctrl-C reaches only this process, which then stops
        # the children in order (API and runner first, the emulator last).
        processes.append(subprocess.Popen(
            python + ["devstack.sqs_runner", *common, "--workers", str(args.workers)],
            cwd=stage.PROJECT_DIR, process_group=0))
        # EventBridge's schedules (the sweep of expired models); SCHEDULE_INTERVAL_SECONDS
        # shortens them.
        processes.append(subprocess.Popen(python + ["devstack.scheduler", *common],
                                          cwd=stage.PROJECT_DIR, process_group=0))
        api = subprocess.Popen(python + ["devstack.server", *common, "--port", str(args.port)],
                               cwd=stage.PROJECT_DIR, process_group=0)
        processes.append(api)
        _wait_for_port(args.port, api, "the API server")
        print(f"Dashboard: http://{HOST}:{args.port}/", flush=True)
        print(f"Ready. Try: curl -X POST -H 'Content-Type: text/csv' --data-binary @iris.csv "
              f"http://{HOST}:{args.port}/models   (Ctrl-C stops everything)", flush=True)
        s3 = session.client("s3", config=aws.CLIENT_CONFIG)
        next_check = time.monotonic() + RESOURCE_CHECK_SECONDS
        while not stopping:
            for process in processes:
                if process.poll() is not None:
                    print(f"{process.args[2:4]} exited with code {process.returncode}; "
                          "stopping", file=sys.stderr, flush=True)
                    stopping = True
            if not stopping and time.monotonic() > next_check:
                _recreate_lost_resources(s3, session, settings, args.visibility_timeout,
                                         origins)
                next_check = time.monotonic() + RESOURCE_CHECK_SECONDS
            time.sleep(0.2)
    finally:
        _stop(processes)
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
