"""moto's server, as `python -m moto.server` runs it, with AWS's behaviour
where our code relies on it and moto 5.2.5 differs:

- DynamoDB serializes writes to an item: of two conditional updates at once,
  exactly one sees the other's result. moto's server answers each request in
  its own thread and its DynamoDB backend takes no lock, so two duplicate
  training deliveries could both pass the lease condition and both train
  (seen: 14 of 1,500 contested updates). Here every DynamoDB action runs
  under one lock, which makes each request atomic as DynamoDB's are.

S3's rules for the presigned requests the API hands out, which moto does not
enforce either:
- Signature Version 2 is refused, as S3 refuses it on buckets created after
  June 2020: a presigned URL with AWSAccessKeyId/Signature, or a POST form
  with AWSAccessKeyId/signature fields, gets S3's 400 InvalidRequest.
- A POST form (a browser-style upload) is checked against its policy: not
  expired, every condition met (exact values, starts-with, and the
  content-length-range of the file), and no field the policy does not cover.
  moto stores whatever it is sent; S3 answers 400 EntityTooLarge or
  EntityTooSmall for a file outside the range and 403 AccessDenied
  otherwise, and stores nothing.
- The form's tagging field tags the object, and the answer to a POST from a
  browser carries the bucket's CORS headers, as S3's does.

Signatures themselves are not verified (moto accepts any credentials).

    python -m devstack.moto_server -H 127.0.0.1 -p 4566
"""
from __future__ import annotations

import base64
import binascii
import calendar
import functools
import json
import threading
import time
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape

from moto.dynamodb.responses import DynamoHandler
from moto.s3.responses import S3Response
from moto.server import main

SIGV4_ONLY = ("The authorization mechanism you have provided is not supported. "
              "Please use AWS4-HMAC-SHA256.")
# Form fields a POST policy need not cover.
_UNCOVERED = {"policy", "x-amz-signature", "file"}


def _error(status: int, code: str, message: str) -> tuple[int, dict, str]:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>")
    return status, {"Content-Type": "application/xml"}, body


def _sigv2_query(request) -> bool:
    arguments = {name.lower() for name in getattr(request, "args", {})}
    return {"awsaccesskeyid", "signature"} <= arguments


def _form_refusal(fields: dict[str, str], bucket: str, size: int):
    """S3's answer to a POST form that its policy does not allow, else None."""
    names = {name.lower(): value for name, value in fields.items()}
    if "awsaccesskeyid" in names or "signature" in names:
        return _error(400, "InvalidRequest", SIGV4_ONLY)
    if "policy" not in names:
        return _error(403, "AccessDenied", "Bucket POST must contain a field named 'policy'.")
    try:
        policy = json.loads(base64.b64decode(names["policy"]))
        expiration = calendar.timegm(time.strptime(policy["expiration"][:19],
                                                   "%Y-%m-%dT%H:%M:%S"))
    except (binascii.Error, ValueError, KeyError, TypeError):
        return _error(400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.")
    if expiration < time.time():
        return _error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    values = {**names, "bucket": bucket}
    covered = set()
    for condition in policy.get("conditions", []):
        if isinstance(condition, dict):
            [(name, expected)] = condition.items()
            operator, name = "eq", name.lower()
        elif condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                return _error(400, "EntityTooLarge",
                              "Your proposed upload exceeds the maximum allowed size")
            if size < low:
                return _error(400, "EntityTooSmall",
                              "Your proposed upload is smaller than the minimum allowed size")
            continue
        else:
            operator, name, expected = condition[0], condition[1].lstrip("$").lower(), condition[2]
        covered.add(name)
        actual = values.get(name)
        met = (actual == expected if operator == "eq"
               else actual is not None and actual.startswith(expected))
        if not met:
            return _error(403, "AccessDenied", "Invalid according to Policy: Policy Condition "
                                               f'failed: ["{operator}", "${name}", "{expected}"]')
    extra = sorted(name for name in names if name not in covered | _UNCOVERED
                   and not name.startswith("x-ignore-"))
    if extra:
        return _error(403, "AccessDenied",
                      f"Invalid according to Policy: Extra input fields: {extra[0]}")
    return None


def _tags(tagging: str) -> dict[str, str]:
    root = ElementTree.fromstring(tagging)
    return {tag.findtext("Key"): tag.findtext("Value") or "" for tag in root.iter("Tag")}


_key_response = S3Response._key_response
_bucket_response_post = S3Response._bucket_response_post


def _key_response_sigv4_only(self, request, full_url):
    if _sigv2_query(request):
        return _error(400, "InvalidRequest", SIGV4_ONLY)
    return _key_response(self, request, full_url)


def _bucket_response_post_as_s3(self, request, bucket_name):
    if self.is_delete_keys() or not request.headers.get("Content-Length"):
        return _bucket_response_post(self, request, bucket_name)
    fields = dict(self.form_data.items())  # the form's own fields, not moto's additions
    body = self.raw_body if isinstance(self.raw_body, bytes) else str(self.raw_body).encode()
    refusal = _form_refusal(fields, bucket_name, len(body))
    if refusal:
        return refusal
    status, headers, content = _bucket_response_post(self, request, bucket_name)
    names = {name.lower(): value for name, value in fields.items()}
    if "tagging" in names:
        stored = self.backend.get_object(bucket_name, self.querystring["key"][0])
        self.backend.put_object_tagging(stored, _tags(names["tagging"]))
    return status, {**headers, **self._get_cors_headers_other()}, content


def serialize_dynamodb() -> None:
    """Runs every DynamoDB action under one lock."""
    lock = threading.Lock()
    action = DynamoHandler.call_action

    @functools.wraps(action)
    def serialized(self):
        with lock:
            return action(self)

    DynamoHandler.call_action = serialized


def enforce_presigned_rules() -> None:
    S3Response._key_response = _key_response_sigv4_only
    S3Response._bucket_response_post = _bucket_response_post_as_s3


def run(argv: list[str] | None = None) -> None:
    """Patches moto (in this process only), then serves."""
    serialize_dynamodb()
    enforce_presigned_rules()
    main(argv)


if __name__ == "__main__":
    run()
