"""The embedded AWS emulator: moto's server on 127.0.0.1, as its own process so
restarting the API keeps the models. Its state lives in memory.

    python -m devstack.emulator [--port 4566]
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from devstack import stage
from devstack.ports import answers


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
