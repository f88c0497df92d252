"""GET / and /dashboard: one self-contained HTML page over the public API.

The page carries its own style and script (no CDN, so it works on an offline
network) and calls the API at paths relative to itself, with the API key the
user types once, kept in the tab's sessionStorage. The page itself holds no
data, so it is served without a key; everything it shows comes from routes
that check one.

The Content-Security-Policy allows exactly the page's inline style and
script (by their SHA-256), requests to its own origin, and POSTs to S3's
(a file too large for one request goes to a presigned S3 form, as the CLI's
does): text from the API (model ids, labels, error messages) is only ever
set as text, and the policy refuses any script that would slip in anyway.
The same S3 origins serve the GET of a model's pickle from its presigned
link, which the page reads to check its SHA-256 before saving it.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from chalice import Response

PAGE_PATHS = ("/", "/dashboard")
_PAGE_FILE = Path(__file__).with_name("dashboard.html")


def _hashes(page: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    if not blocks:
        raise ValueError(f"{_PAGE_FILE.name} has no <{tag}> block")
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                    for b in blocks)


def _storage_origins() -> str:
    """Where presigned upload forms point: S3 in AWS (the bucket's virtual host,
    bucket.s3.<region>.amazonaws.com), or the emulator that AWS_ENDPOINT_URL(_S3)
    names (moto's server, LocalStack)."""
    origins = ["https://*.amazonaws.com"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return " ".join(origins)


@functools.cache
def _page() -> tuple[str, dict[str, str]]:
    page = _PAGE_FILE.read_text(encoding="utf-8")
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {_hashes(page, 'script')}",
        f"style-src {_hashes(page, 'style')}",
        f"connect-src 'self' {_storage_origins()}",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return page, headers


def response() -> Response:
    page, headers = _page()
    return Response(body=page, status_code=200, headers=dict(headers))
