"""moto's server, as `python -m moto.server` runs it, with one fix for browsers.

A browser PUTs to a presigned URL only after a CORS preflight: an OPTIONS
request to the same URL, which never carries the Content-Type the URL was
signed with. S3 answers a preflight from the bucket's CORS rules alone;
moto 5.2.5 first checks that the URL's signed Content-Type is among the
request's headers and answers 403 SignatureDoesNotMatch, so no browser
upload could work against it. Here a preflight skips that check and gets
moto's own CORS answer; every other request is checked as before.

    python -m devstack.moto_server -H 127.0.0.1 -p 4566
"""
from __future__ import annotations

from moto.s3.responses import S3Response
from moto.server import main

_signed_headers_missing = S3Response._invalid_headers


def _invalid_headers(self, url: str, headers: dict[str, str]) -> bool:
    if any(name.lower() == "access-control-request-method" for name in headers):
        return False  # a CORS preflight: S3 does not authenticate it
    return _signed_headers_missing(self, url, headers)


S3Response._invalid_headers = _invalid_headers

if __name__ == "__main__":
    main()
