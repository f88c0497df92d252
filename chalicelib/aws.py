"""boto3 clients, built once per Lambda container with explicit timeouts.

The endpoint comes from boto3 itself: AWS_ENDPOINT_URL points every client at
an emulator (moto's server or LocalStack); unset, the clients talk to AWS.
"""
from __future__ import annotations

import functools
import threading

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Bounded so an unreachable endpoint turns into a 503 within seconds instead of
# a request that hangs until API Gateway's 29 s timeout.
CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=15,
    retries={"mode": "standard", "total_max_attempts": 3},
)

_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    return boto3.session.Session()


@functools.cache
def client(service: str):
    # boto3 sessions are not thread-safe while creating clients; the clients are.
    with _lock:
        return _session().client(service, config=CLIENT_CONFIG)


@functools.cache
def resource(service: str):
    with _lock:
        return _session().resource(service, config=CLIENT_CONFIG)


class ServiceUnavailable(Exception):
    """An AWS dependency failed in a way worth retrying later."""

    def __init__(self, what: str, cause: Exception):
        super().__init__(f"{what}: {cause}")
        self.what = what
        self.cause = cause


def is_aws_failure(error: BaseException) -> bool:
    return isinstance(error, (BotoCoreError, ClientError))
