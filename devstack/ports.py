"""Ports, logs and stopping of the local processes (the stack, tests, benchmarks)."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel hands out on 127.0.0.1 (all held until all are
    picked, so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def answers(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, limit: int = 4000) -> str:
    """The end of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL when it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
