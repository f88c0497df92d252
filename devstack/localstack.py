"""LocalStack as the local AWS emulator, without Docker: its core runtime
(`python -m localstack.runtime.main`) from .venv-localstack, on 127.0.0.1,
with S3 and SQS from LocalStack's own providers and DynamoDB from our provider
backed by the moto inside LocalStack (devstack/localstack_plugins). What runs,
the settings and the differences from moto's server: docs/localstack.md.

    python -m devstack.localstack [--port 4566]      # LocalStack alone

devstack.run uses it for `EMULATOR=localstack make run`; an existing
LocalStack (LOCALSTACK_HOST, as localstack-client reads it) is used as it is.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack import stage
from devstack.ports import tail

VENV = stage.PROJECT_DIR / ".venv-localstack"
PYTHON = VENV / "bin" / "python"
INSTALLED = VENV / ".installed"  # written by `make localstack-venv` when it succeeded
# What the app uses; DynamoDB's dependencies (dynamodbstreams, kinesis) load
# lazily and are never called.
SERVICES = ("s3", "sqs", "dynamodb")
DYNAMODB_PROVIDER = "mlapi_moto"  # devstack/localstack_plugins: moto, serialized
STOP_GRACE_SECONDS = 3.0  # SIGTERM, then SIGKILL: once it has served requests it
# stayed in "Stopping all services" on every try here (its state is in memory:
# nothing is lost by killing it)


def installed() -> bool:
    return INSTALLED.exists()


def install() -> None:
    """`make localstack-venv` (a few minutes, once), unless already done."""
    if installed():
        return
    print("Installing LocalStack into .venv-localstack (once; a few minutes): "
          "make localstack-venv", flush=True)
    result = subprocess.run(["make", "localstack-venv"], cwd=stage.PROJECT_DIR)
    if result.returncode != 0 or not installed():
        raise RuntimeError("installing LocalStack failed (make localstack-venv exited "
                           f"{result.returncode}); its output is above")


def environment(host: str, port: int, state_dir: Path) -> dict[str, str]:
    """LocalStack's settings for a run on host:port keeping its files in state_dir."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "LOCALSTACK_", "PROVIDER_OVERRIDE_"))}
    env.update({
        # The machine looks like a container; without this LocalStack writes
        # to /var/lib/localstack.
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(state_dir / "filesystem"),
        "CONFIG_DIR": str(state_dir / "config"),
        # hypercorn binds the host given; the default (twisted) binds 0.0.0.0.
        "GATEWAY_LISTEN": f"{host}:{port}",
        "GATEWAY_SERVER": "hypercorn",
        "LOCALSTACK_HOST": f"{host}:{port}",
        # Queue URLs on the gateway's address; the default host name
        # (sqs.<region>.localhost.localstack.cloud) does not resolve offline.
        "SQS_ENDPOINT_STRATEGY": "path",
        "DNS_ADDRESS": "0",  # no DNS server of its own
        "DISABLE_EVENTS": "1",  # no usage reports
        "SKIP_SSL_CERT_DOWNLOAD": "1",  # nothing fetched at start
        "SERVICES": ",".join(SERVICES),
        # Loaded at start, so that "ready" means ready (S3 alone takes seconds
        # to load, on the first request otherwise).
        "EAGER_SERVICE_LOADING": "1",
        "PROVIDER_OVERRIDE_DYNAMODB": DYNAMODB_PROVIDER,
        # Presigned URLs and forms are checked against their signatures, as S3 does.
        "S3_SKIP_SIGNATURE_VALIDATION": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def health(endpoint: str, timeout: float = 2.0) -> dict | None:
    """LocalStack's health document, or None if nothing LocalStack answers there."""
    try:
        with urllib.request.urlopen(endpoint + "/_localstack/health", timeout=timeout) as reply:
            if reply.status == 200:
                document = json.loads(reply.read())
                return document if isinstance(document, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return None


def ready(endpoint: str) -> bool:
    """Whether a LocalStack there serves every service the app uses."""
    document = health(endpoint)
    if document is None:
        return False
    services = document.get("services", {})
    return all(services.get(name) in ("available", "running") for name in SERVICES)


MAIN = ("-m", "localstack.runtime.main")


def start(host: str, port: int, log_path: Path, state_dir: Path, timeout: float = 120.0,
          main: tuple[str, ...] = MAIN) -> subprocess.Popen:
    """Starts LocalStack (installing it first if needed) in a process group of
    its own, logging to log_path, and waits until its health endpoint says S3,
    SQS and DynamoDB are there. `main`: the arguments of .venv-localstack's
    python that run it (tests run a patched LocalStack)."""
    install()
    state_dir.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://{host}:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(PYTHON), *main], cwd=state_dir,
            env=environment(host, port, state_dir), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, process_group=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"LocalStack exited with code {process.returncode} before it "
                               f"was ready; {log_path} ends with:\n{tail(log_path, 2000)}")
        if ready(endpoint):
            return process
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"LocalStack did not report s3, sqs and dynamodb ready on {endpoint} "
                       f"within {timeout:.0f} s; see {log_path}")


def stop(process: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to LocalStack's process group; SIGKILL to the group if it has
    not exited within `grace` seconds (it sometimes ignores SIGTERM for minutes)."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGKILL)  # whatever it left in its group
    if process.poll() is None:
        process.wait(timeout=10)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def user_endpoint() -> str | None:
    """The endpoint of a LocalStack the user configured with LOCALSTACK_HOST
    (localstack-client's convention, host[:port]), or None if it is not set.
    A host name "localhost" becomes 127.0.0.1: botocore keeps the app's
    virtual-hosted S3 addressing path-style only for an IP address."""
    given = os.environ.get("LOCALSTACK_HOST", "").strip()
    if not given:
        return None
    from localstack_client.config import get_service_endpoint

    endpoint = get_service_endpoint("s3", localstack_host=given)
    return endpoint.replace("://localhost:", "://127.0.0.1:")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run LocalStack (no Docker) on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=stage.DEFAULT_EMULATOR_PORT)
    parser.add_argument("--state-dir", type=Path,
                        default=stage.PROJECT_DIR / ".devstack" / "localstack")
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    localstack = start("127.0.0.1", args.port, args.state_dir / "localstack.log", args.state_dir)
    print(f"LocalStack on http://127.0.0.1:{args.port} (ready in "
          f"{time.monotonic() - started:.1f} s; log {args.state_dir / 'localstack.log'})",
          flush=True)
    try:
        localstack.wait()
    except KeyboardInterrupt:
        stop(localstack)
