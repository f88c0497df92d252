"""The local stack for end-to-end tests: `python -m devstack.run` (moto's
server, the resources, the API server and the SQS runner, as `make run` starts
them) on free 127.0.0.1 ports, in its own session, stopped with SIGINT.

    from tests.stack import running_stack

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory):
        with running_stack(tmp_path_factory.mktemp("devstack"),
                           env={"REQUIRE_API_KEY": "true", "API_KEYS": "k1,k2"}) as running:
            yield running

running_stack(log_dir, *, env=None, visibility_timeout=5, extra_args=(), emulator="moto")
  - starts devstack.run on two free ports with `--emulator emulator` (moto's
    server, or LocalStack from .venv-localstack: docs/localstack.md), `--log-dir
    log_dir` (its output in log_dir/stack.log, the emulator's in
    log_dir/moto.log or log_dir/localstack.log) and
    `--visibility-timeout visibility_timeout`, plus `extra_args`;
  - environment: this process's, cleaned of anything that could redirect the
    stack (.chalice/config.json's variable names, AWS_* credentials, profile,
    region and endpoint, PORT, API keys, signing key, ...: CLEANED), with
    dummy AWS credentials, then `env` on top (e.g. REQUIRE_API_KEY=true,
    API_KEYS=k1,k2, MODEL_RECHECK_SECONDS=1, MODEL_SIGNING_KEY=...). Without
    MODEL_SIGNING_KEY the stack signs with the checkout's .devstack/signing.key;
  - waits (STARTUP_TIMEOUT s at most, LOCALSTACK_STARTUP_TIMEOUT on LocalStack) until the API answers any HTTP request,
    failing the test (with the stack's output) if it exits or never answers;
  - yields a Stack: api and endpoint URLs, the ports, log_dir, process,
    http (a requests.Session that ignores proxies), boto3 clients on the
    emulator (s3, sqs, dynamodb resource, dynamodb_client), table (the dev
    stage's table), queue_url(name), output() for failure messages,
    wait_for_training(model_id, headers=...);
  - on exit sends SIGINT to devstack.run alone and fails the test (pytest.fail)
    unless it exits 0 within SHUTDOWN_TIMEOUT s, leaves no process of its
    session running and frees both ports. When the body raised, it only
    cleans up (the problems are added to the exception as a note).

Lower-level pieces, for tests that manage the process themselves
(tests/test_faults.py): clean_environment, stack_command, wait_until_answering,
kill_leftovers, stop_stack, wait_for_training.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import boto3
import pytest
import requests
from botocore.config import Config

from devstack.ports import answers, free_ports, tail

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REGION = "us-east-1"
STARTUP_TIMEOUT = 60
# LocalStack loads its services before it is healthy: 11 to 13.5 s on a
# loaded 2-core machine, against moto's second or two.
LOCALSTACK_STARTUP_TIMEOUT = 120
SHUTDOWN_TIMEOUT = 20
TRAINING_TIMEOUT = 60
HTTP_TIMEOUT = 30  # no request may hang the suite
TRAINING = "Model is Training"  # the seed's text, spelled out here

_CONFIG = json.loads((REPO / ".chalice" / "config.json").read_text())
_DEV = _CONFIG["stages"]["dev"]["environment_variables"]


def _stage_variable_names() -> set[str]:
    names = set(_CONFIG.get("environment_variables", {}))
    for stage in _CONFIG["stages"].values():
        names.update(stage.get("environment_variables", {}))
    return names


# Dropped from the environment the stack gets: the stack must use
# .chalice/config.json's names and the emulator's region, and a developer's
# shell must not redirect it or switch features on or off.
CLEANED = frozenset({
    *_stage_variable_names(),
    "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "PORT", "EMULATOR", "EMULATOR_PORT", "DEVSTACK_LOG_DIR", "LOCALSTACK_HOST",
    "RUNNER_WORKERS", "TRAINING_VISIBILITY_TIMEOUT", "TRAINING_LEASE_SECONDS",
    "BATCH_LEASE_SECONDS",
    "MODEL_RECHECK_SECONDS", "MODEL_CACHE_SIZE", "REQUIRE_API_KEY", "API_KEYS",
    "SCHEDULE_INTERVAL_SECONDS", "ORPHAN_GRACE_SECONDS", "UPLOAD_RETENTION_SECONDS",
    "API_KEYS_PARAMETER", "MODEL_SIGNING_KEY", "MODEL_SIGNING_KEY_PARAMETER",
})


def clean_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without CLEANED, with dummy AWS credentials
    and the emulator's region, then `env` on top."""
    cleaned = {name: value for name, value in os.environ.items() if name not in CLEANED}
    cleaned.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                   AWS_DEFAULT_REGION=REGION, PYTHONUNBUFFERED="1")
    cleaned.update(env or {})
    return cleaned


def stack_command(api_port: int, emulator_port: int, log_dir: Path, *,
                  visibility_timeout: int = 5, extra_args: Sequence[str] = (),
                  emulator: str = "moto") -> list[str]:
    return [sys.executable, "-m", "devstack.run", "--port", str(api_port),
            "--emulator", emulator, "--emulator-port", str(emulator_port),
            "--visibility-timeout", str(visibility_timeout), "--log-dir", str(log_dir),
            *extra_args]


def wait_until_answering(http: requests.Session, api: str, process: subprocess.Popen,
                         output: Callable[[], str], timeout: float = STARTUP_TIMEOUT) -> None:
    """Until the API answers any HTTP request; fails the test if devstack.run
    exits first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"devstack.run exited with code {process.returncode} before the "
                        f"API answered\n{output()}", pytrace=False)
        try:
            http.get(f"{api}/check_model_status/x", timeout=2)
            return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the API did not answer on {api} within {timeout} s\n{output()}",
                        pytrace=False)
        time.sleep(0.2)


def session_members(session_id: int) -> list[int]:
    """Live processes in a session: what a process started with
    start_new_session=True started in turn (even in its own process groups)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, _pgrp, session = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(session) == session_id and state != "Z":
            members.append(int(entry.name))
    return members


def kill_leftovers(session_id: int, grace: float = 5) -> list[int]:
    """Waits up to `grace` seconds for a session to empty, then SIGKILLs what
    is left; returns the pids that were left."""
    deadline = time.monotonic() + grace
    while (left := session_members(session_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def stop_stack(process: subprocess.Popen, ports: Sequence[int]) -> list[str]:
    """Ctrl-C for the stack: SIGINT to devstack.run alone, which must stop
    everything it started. Kills what is left of its session on timeout.
    Returns what went wrong."""
    problems = []
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"devstack.run did not exit within {SHUTDOWN_TIMEOUT} s of SIGINT")
            process.kill()
            process.wait(timeout=10)
    # Whatever is left in the stack's session (its children run in process
    # groups of their own) was started by it and not stopped.
    if left := kill_leftovers(process.pid):
        problems.append(f"processes {left} of the stack's session were still running; killed")
    if not problems and process.returncode != 0:
        problems.append(f"devstack.run exited with code {process.returncode} on SIGINT")
    deadline = time.monotonic() + 5  # a closed listener may take a moment to go
    while any(answers(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    still_open = [port for port in ports if answers(port)]
    if still_open:
        problems.append(f"ports {still_open} still accept connections after the stack stopped")
    return problems


def wait_for_training(http: requests.Session, api: str, model_id: str, *,
                      method: str = "POST", headers: Mapping[str, str] | None = None,
                      timeout: float = TRAINING_TIMEOUT,
                      output: Callable[[], str] = lambda: "") -> dict:
    """Polls the model's status until it is no longer "Model is Training";
    returns it. Fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = http.request(method, f"{api}/check_model_status/{model_id}", headers=headers,
                              timeout=HTTP_TIMEOUT)
        assert answer.status_code == 200, (answer.status_code, answer.text)
        status = answer.json()
        if status["status"] != TRAINING:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"model {model_id} still training after {timeout} s: {status}\n"
                        f"{output()}", pytrace=False)
        time.sleep(0.1)


@dataclass
class Stack:
    api: str
    endpoint: str
    api_port: int
    emulator_port: int
    log_dir: Path
    process: subprocess.Popen
    http: requests.Session
    s3: object
    sqs: object
    dynamodb: object
    dynamodb_client: object
    emulator: str = "moto"  # "moto" or "localstack"

    @property
    def output_path(self) -> Path:
        return self.log_dir / "stack.log"

    def output(self) -> str:
        """The stack's own output and the emulator's log, for failure messages."""
        return (f"--- devstack.run output ({self.output_path}) ---\n{tail(self.output_path)}\n"
                f"--- {self.emulator} log ---\n"
                f"{tail(self.log_dir / f'{self.emulator}.log', 2000)}")

    @property
    def bucket(self) -> str:
        return _DEV["MODELS_BUCKET"]

    @property
    def table(self):
        return self.dynamodb.Table(_DEV["MODELS_TABLE"])

    def queue_url(self, name: str = _DEV["TRAINING_QUEUE"]) -> str:
        return self.sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def wait_for_training(self, model_id: str, timeout: float = TRAINING_TIMEOUT,
                          headers: Mapping[str, str] | None = None) -> dict:
        """The model's status once it is no longer "Model is Training"."""
        return wait_for_training(self.http, self.api, model_id, headers=headers,
                                 timeout=timeout, output=self.output)


@contextmanager
def running_stack(log_dir: Path, *, env: Mapping[str, str] | None = None,
                  visibility_timeout: int = 5, extra_args: Sequence[str] = (),
                  emulator: str = "moto") -> Iterator[Stack]:
    """devstack.run on free ports until the block ends (see the module's docstring)."""
    if emulator == "localstack":
        from devstack import localstack

        localstack.install()  # once (minutes), not inside the start-up timeout
    api_port, emulator_port = free_ports(2)
    ports = [api_port, emulator_port]
    command = stack_command(api_port, emulator_port, log_dir,
                            visibility_timeout=visibility_timeout, extra_args=extra_args,
                            emulator=emulator)
    environment = clean_environment({"DEVSTACK_LOG_DIR": str(log_dir), **(env or {})})
    with open(log_dir / "stack.log", "wb") as output:
        process = subprocess.Popen(command, cwd=REPO, env=environment,
                                   stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL,
                                   # its own session: on timeout every process it
                                   # started can be found and killed, and nothing else
                                   start_new_session=True)
    api = f"http://{HOST}:{api_port}"
    endpoint = f"http://{HOST}:{emulator_port}"
    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test",
                                    region_name=REGION)
    config = Config(connect_timeout=2, read_timeout=15, retries={"total_max_attempts": 2})
    http = requests.Session()
    http.trust_env = False  # no proxies, no .netrc: this is 127.0.0.1
    stack = Stack(
        api=api, endpoint=endpoint, api_port=api_port, emulator_port=emulator_port,
        log_dir=log_dir, process=process, http=http,
        s3=session.client("s3", endpoint_url=endpoint, config=config),
        sqs=session.client("sqs", endpoint_url=endpoint, config=config),
        dynamodb=session.resource("dynamodb", endpoint_url=endpoint, config=config),
        dynamodb_client=session.client("dynamodb", endpoint_url=endpoint, config=config),
        emulator=emulator,
    )
    try:
        wait_until_answering(http, api, process, stack.output,
                             timeout=LOCALSTACK_STARTUP_TIMEOUT if emulator == "localstack"
                             else STARTUP_TIMEOUT)
    except BaseException:
        http.close()
        stop_stack(process, ports)  # clean up only; the failure above is the news
        raise
    try:
        yield stack
    except BaseException as error:
        http.close()
        problems = stop_stack(process, ports)
        if problems:
            error.add_note("stopping the stack: " + "; ".join(problems))
        raise
    http.close()
    problems = stop_stack(process, ports)
    if problems:
        pytest.fail("; ".join(problems) + "\n" + stack.output(), pytrace=False)
