"""The local AWS emulator, as its own process so restarting the API keeps the
models; its state lives in memory. Two kinds, started and stopped through one
interface (Emulator) so that devstack.run treats them alike:

- "moto" (the default): moto's server, patched where our code relies on AWS's
  behaviour (devstack.moto_server);
- "localstack": LocalStack's core runtime without Docker, with DynamoDB from
  our moto-backed provider (devstack.localstack, docs/localstack.md).

    python -m devstack.emulator [--port 4566]     # moto's server alone
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack import stage
from devstack.ports import answers, stop_process

KINDS = ("moto", "localstack")


def describe(endpoint: str) -> str:
    """Names the emulator behind an endpoint: LocalStack has a health route."""
    try:
        with urllib.request.urlopen(endpoint + "/_localstack/health", timeout=2) as reply:
            if reply.status == 200:
                return "LocalStack"
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return "an AWS emulator (moto server or compatible)"


def start_moto(host: str, port: int, log_path: str = os.devnull,
               timeout: float = 30.0, module: str = "devstack.moto_server") -> subprocess.Popen:
    """Starts moto's server (`python -m module`), logging to log_path, and
    waits until it answers."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "-H", host, "-p", str(port)],
            cwd=stage.PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT, process_group=0,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode}; "
                               f"see {log_path}")
        if answers(port, host):
            return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto server did not answer on {host}:{port} within {timeout:.0f} s")


def kind_from_env(default: str = "moto") -> str:
    """EMULATOR's value (moto or localstack), or `default` when it is unset."""
    kind = os.environ.get("EMULATOR", "").strip().lower() or default
    if kind not in KINDS:
        raise SystemExit(f"EMULATOR={kind!r} is not an emulator this stack runs; "
                         f"expected one of: {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class Emulator:
    """One emulator this stack starts on host:port, logging under log_dir."""
    kind: str  # one of KINDS
    host: str
    port: int
    log_dir: Path

    @property
    def endpoint(self) -> str:
        # An IP address, never "localhost": botocore turns the app's
        # virtual-hosted S3 addressing into path-style only for an IP.
        return f"http://{self.host}:{self.port}"

    @property
    def title(self) -> str:
        return "moto server" if self.kind == "moto" else "LocalStack"

    @property
    def log_path(self) -> Path:
        return self.log_dir / ("moto.log" if self.kind == "moto" else "localstack.log")

    def start(self) -> subprocess.Popen:
        """Starts it and returns once it serves S3, SQS and DynamoDB."""
        if self.kind == "moto":
            return start_moto(self.host, self.port, str(self.log_path))
        from devstack import localstack

        return localstack.start(self.host, self.port, self.log_path,
                                self.log_dir / "localstack")

    def stop(self, process: subprocess.Popen) -> None:
        """Stops it, escalating to SIGKILL if it does not go."""
        if self.kind == "moto":
            stop_process(process)
        else:
            from devstack import localstack

            localstack.stop(process)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run moto's server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=4566)
    args = parser.parse_args()
    moto = start_moto("127.0.0.1", args.port)
    print(f"moto server on http://127.0.0.1:{args.port}", flush=True)
    try:
        moto.wait()
    except KeyboardInterrupt:
        moto.terminate()
