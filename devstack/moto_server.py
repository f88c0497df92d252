"""moto's server, as `python -m moto.server` runs it, with two fixes that make
it behave like AWS where our code relies on AWS's behaviour.

1. DynamoDB serializes writes to an item: of two conditional updates at once,
   exactly one sees the other's result. moto's server answers each request in
   its own thread and its DynamoDB backend takes no lock, so two duplicate
   training deliveries could both pass the lease condition and both train
   (seen: 1 in about 300 contested updates). Here every DynamoDB action runs
   under one lock, which makes each request atomic as DynamoDB's are.
2. A browser PUTs to a presigned URL only after a CORS preflight: an OPTIONS
   request to the same URL, which never carries the Content-Type the URL was
   signed with. S3 answers a preflight from the bucket's CORS rules alone;
   moto 5.2.5 first checks that the URL's signed Content-Type is among the
   request's headers and answers 403 SignatureDoesNotMatch, so no browser
   upload could work against it. Here a preflight skips that check and gets
   moto's own CORS answer; every other request is checked as before.

    python -m devstack.moto_server -H 127.0.0.1 -p 4566
"""
from __future__ import annotations

import functools
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.s3.responses import S3Response
from moto.server import main



def serialize_dynamodb() -> None:
    """Runs every DynamoDB action under one lock (fix 1)."""
    lock = threading.Lock()
    action = DynamoHandler.call_action

    @functools.wraps(action)
    def serialized(self):
        with lock:
            return action(self)

    DynamoHandler.call_action = serialized


def answer_preflights_from_cors() -> None:
    """Lets a CORS preflight of a presigned URL through to moto's CORS answer (fix 2)."""
    signed_headers_missing = S3Response._invalid_headers

    def invalid_headers(self, url: str, headers: dict[str, str]) -> bool:
        if any(name.lower() == "access-control-request-method" for name in headers):
            return False  # a CORS preflight: S3 does not authenticate it
        return signed_headers_missing(self, url, headers)

    S3Response._invalid_headers = invalid_headers


def run(argv: list[str] | None = None) -> None:
    """Patches moto (in this process only), then serves."""
    serialize_dynamodb()
    answer_preflights_from_cors()
    main(argv)


if __name__ == "__main__":
    run()
