"""AWS clients, built once per Lambda container with explicit timeouts.

botocore's low-level clients only: importing boto3 pulls in s3transfer and
its resource layer, about a tenth of a second of every cold start for
nothing the app uses.

The endpoint comes from botocore itself: AWS_ENDPOINT_URL points every client
at an emulator (moto's server or LocalStack); unset, the clients talk to AWS.
"""
from __future__ import annotations

import functools
import threading

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Bounded so an unreachable or hung endpoint turns into a 503 within seconds,
# well inside API Gateway's 29 s: a call gives up after 2 attempts of at most
# 2 s to connect and 4 s to answer (the read timeout is per socket read, so
# large transfers are not cut short).
CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=4,
    retries={"mode": "standard", "total_max_attempts": 2},
)

_lock = threading.Lock()


@functools.cache
def _session() -> botocore.session.Session:
    return botocore.session.get_session()


@functools.cache
def client(service: str):
    # Sessions are not thread-safe while creating clients; the clients are.
    with _lock:
        return _session().create_client(service, config=CLIENT_CONFIG)


def is_aws_failure(error: BaseException) -> bool:
    return isinstance(error, (BotoCoreError, ClientError))
