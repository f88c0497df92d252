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

# S3 gets two more settings, both for the presigned URLs and forms we hand out:
# - Signature Version 4. botocore presigns S3 with SigV2 unless told otherwise,
#   and S3 refuses SigV2 on buckets created after June 2020 (and in every
#   region opened since 2014).
# - Virtual-hosted addresses (bucket.s3.<region>.amazonaws.com). With the
#   default, a bucket outside us-east-1 gets the global endpoint, which S3
#   answers with a redirect while a new bucket's name spreads through DNS (up
#   to a day), and a browser's CORS preflight cannot follow a redirect.
#   botocore keeps path-style addresses for an endpoint that is an IP
#   address, such as the local emulator's.
S3_CONFIG = CLIENT_CONFIG.merge(Config(signature_version="s3v4",
                                       s3={"addressing_style": "virtual"}))

# Completing a multipart upload makes S3 join the parts, which may take minutes
# for thousands of them (S3 keeps the connection alive meanwhile): run_batch's
# S3 client waits that long for an answer. (moto's server joined the 34 parts
# of 750 MB of results in more than 4 s, and the run was redelivered.)
SLOW_S3_CONFIG = S3_CONFIG.merge(Config(read_timeout=600))

_lock = threading.Lock()


def config_for(service: str, slow: bool = False) -> Config:
    if service == "s3":
        return SLOW_S3_CONFIG if slow else S3_CONFIG
    return CLIENT_CONFIG


@functools.cache
def _session() -> botocore.session.Session:
    return botocore.session.get_session()


class _LazyClient:
    """A botocore client built on first use. Building one costs 20-40 ms
    (its service model is parsed from JSON), and a warm-cache-miss predict
    needs only DynamoDB: the S3 and SQS clients wait until a request uses them."""

    def __init__(self, service: str, slow: bool = False):
        self._service = service
        self._slow = slow
        self._client = None

    def __getattr__(self, name: str):
        if self._client is None:
            # Sessions are not thread-safe while creating clients; the clients are.
            with _lock:
                if self._client is None:
                    self._client = _session().create_client(
                        self._service, config=config_for(self._service, self._slow))
        return getattr(self._client, name)


@functools.cache
def client(service: str):
    return _LazyClient(service)


@functools.cache
def slow_client(service: str):
    """A client that waits minutes for an answer (see SLOW_S3_CONFIG)."""
    return _LazyClient(service, slow=True)


def is_aws_failure(error: BaseException) -> bool:
    return isinstance(error, (BotoCoreError, ClientError))
