"""One keep-alive HTTP client, as light as Python allows: a raw socket, one
prebuilt request, and only the status line and Content-Length parsed.

    python -m bench.loadclient --port P --path /models/ID --seconds 4 --start-at EPOCH

Opens one connection, sends one untimed request, waits until --start-at (so
that several clients start together), then sends requests back to back for
--seconds (and at most --max-requests). Prints one JSON line: counts by
status, errors, its own elapsed time and latency percentiles. Standard
library only, so it starts fast.
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time


class Connection:
    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.connects = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buffer = sock, b""
        self.connects += 1
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes) -> int:
        """Sends the request and reads one whole answer; returns its status."""
        sock = self.sock or self._connect()
        sock.sendall(request)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
        head = buffer[:end]
        status = int(head[9:12])
        length, close = 0, head.startswith(b"HTTP/1.0")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        total = end + 4 + length
        while len(buffer) < total:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection mid-answer")
            buffer += chunk
        self.buffer = buffer[total:]
        if close:
            self.close()
        return status


def build_request(host: str, port: int, method: str, path: str, body: bytes) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: text/csv\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="6.9,3.1,5.1,2.3")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    request = build_request(args.host, args.port, args.method, args.path, args.body.encode())
    connection = Connection(args.host, args.port, args.timeout)
    statuses: dict[int, int] = {}
    errors: list[str] = []
    latencies: list[int] = []
    warmup_status = None
    try:
        warmup_status = connection.exchange(request)
    except OSError as error:
        errors.append(f"warm-up: {type(error).__name__}: {error}")
    late = time.time() - args.start_at
    if late < 0:
        time.sleep(-late)
    started = time.perf_counter()
    deadline = started + args.seconds
    clock = time.perf_counter_ns
    if not errors:
        for _ in range(args.max_requests):
            sent = clock()
            try:
                status = connection.exchange(request)
            except OSError as error:
                errors.append(f"{type(error).__name__}: {error}")
                connection.close()
                if len(errors) >= 10:
                    break
                continue
            latencies.append(clock() - sent)
            statuses[status] = statuses.get(status, 0) + 1
            if time.perf_counter() >= deadline:
                break
    elapsed = time.perf_counter() - started
    connection.close()
    print(json.dumps({
        "statuses": {str(code): count for code, count in statuses.items()},
        "errors": errors, "elapsed": elapsed, "late": max(0.0, late),
        "connects": connection.connects, "warmup_status": warmup_status,
        "p50_ms": percentile(latencies, 0.5) / 1e6, "p99_ms": percentile(latencies, 0.99) / 1e6,
    }), flush=True)


if __name__ == "__main__":
    sys.exit(main())
