"""Rules AWS enforces and the emulators do not, asserted directly: presigned
requests signed with SigV4, Lambda's 6 MB request payload, API keys on every
deployed stage. (IAM, per function: tests/deploy/test_policy.py.)"""
from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
from chalice.deploy.swagger import SwaggerGenerator
from chalice.test import Client

from app import app
from chalicelib import api, components, dashboard
from chalicelib.security import ApiKeys
from chalicelib.storage import PIPELINE_ARTIFACT
from devstack import stage
from infra import secrets
from tests.conftest import IRIS
from tests.reliability import record
from tests.test_service import _train_queued

CSV = {"Content-Type": "text/csv"}
CONFIG = json.loads((stage.PROJECT_DIR / ".chalice" / "config.json").read_text())
STAGES = sorted(CONFIG["stages"])
MB = 2 ** 20


# --- presigned requests: SigV4 ----------------------------------------------------------

def _sigv4_query(url: str) -> dict:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_every_url_handed_out_is_signed_with_sigv4(aws):
    """S3 refuses Signature Version 2 on buckets created after June 2020;
    moto accepts both. Every link and form the API hands out: the artifact's
    presigned GET and the upload's presigned POST."""
    model_id = components.service().submit(IRIS).model_id
    assert _train_queued(aws) == ["ready"]
    with Client(app) as client:
        artifact = client.http.get(f"/models/{model_id}/artifact").json_body["url"]
        form = client.http.post("/uploads").json_body
    query = _sigv4_query(artifact)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256", artifact
    assert "AWSAccessKeyId" not in query and "Signature" not in query
    assert query["X-Amz-Credential"].split("/")[2:] == ["us-east-1", "s3", "aws4_request"]
    assert form["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"
    assert "AWSAccessKeyId" not in form["fields"] and "signature" not in form["fields"]
    sigv2 = sorted({"AWSAccessKeyId", "Signature", "signature"} & (set(query) | set(form["fields"])))
    record("Security: AWS rules", "Presigned requests",
           "took every URL the API hands out (artifact GET, upload form POST) and read "
           "how it is signed", 2,
           f"artifact link {query['X-Amz-Algorithm']} "
           f"({'/'.join(query['X-Amz-Credential'].split('/')[2:4])}), upload form "
           f"{form['fields']['x-amz-algorithm']}; SigV2 fields: {sigv2 or 'none'}")


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
def test_presigned_requests_go_to_the_buckets_own_region(aws, monkeypatch, region):
    """SigV4 signs for a region: a link to the global endpoint for a bucket
    elsewhere is redirected, which a browser's CORS preflight cannot follow."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    components.reset()
    store = components.store()
    bucket = components.settings().bucket
    host = f"{bucket}.s3.amazonaws.com" if region == "us-east-1" \
        else f"{bucket}.s3.{region}.amazonaws.com"
    link = store.artifact_url("model_x", PIPELINE_ARTIFACT, 60)
    form = store.upload_form("upload_" + "0" * 24, 60, 100)
    assert urlsplit(link).netloc == host and urlsplit(form["url"]).netloc == host
    assert f"/{region}/s3/aws4_request" in _sigv4_query(link)["X-Amz-Credential"]
    assert f"/{region}/s3/aws4_request" in form["fields"]["x-amz-credential"]
    # The dashboard's Content-Security-Policy lets the page POST there.
    [source] = [origin for origin in dashboard._storage_origins().split() if "*" in origin]
    assert fnmatch.fnmatch(f"https://{host}", source) and form["url"].startswith("https://")


# --- Lambda's request payload --------------------------------------------------------

def test_the_deployed_api_passes_csv_and_json_to_lambda_as_text():
    """What the limit's arithmetic assumes, read from the API definition
    Chalice deploys: a Lambda proxy integration, whose binary media types
    (base64 in the event) are the ones api.event_bytes counts as binary, and
    cover neither text/csv nor application/json."""
    swagger = SwaggerGenerator("us-east-1", {"api_handler_arn": "arn:aws:lambda:x"}) \
        .generate_swagger(app)
    binary = swagger["x-amazon-apigateway-binary-media-types"]
    assert tuple(binary) == api.BINARY_MEDIA_TYPES
    assert not {"text/csv", "application/json", "*/*", "text/*"} & set(binary)
    for path, methods in swagger["paths"].items():
        for method, operation in methods.items():
            integration = operation["x-amazon-apigateway-integration"]
            assert integration["type"] == "aws_proxy", (path, method)
            # Binary bodies become base64 text; text stays text.
            assert integration.get("contentHandling", "CONVERT_TO_TEXT") == "CONVERT_TO_TEXT"


def _proxy_event(body: str, query: dict, headers: dict) -> dict:
    """A REST API proxy event as API Gateway builds it (headers and query twice)."""
    return {
        "resource": "/models", "path": "/models", "httpMethod": "POST",
        "headers": headers, "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": None, "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123", "resourcePath": "/models", "httpMethod": "POST",
            "extendedRequestId": "x" * 16, "requestTime": "02/Dec/2026:10:00:00 +0000",
            "path": "/api/models", "accountId": "123456789012", "protocol": "HTTP/1.1",
            "stage": "api", "domainPrefix": "abcdefghij", "requestTimeEpoch": 1796000000000,
            "requestId": "0" * 36, "domainName": "abcdefghij.execute-api.eu-west-3.amazonaws.com",
            "apiId": "abcdefghij", "authorizer": {"principalId": "api-key",
                                                  "integrationLatency": 123},
            "identity": {"cognitoIdentityPoolId": None, "accountId": None,
                         "cognitoIdentityId": None, "caller": None, "sourceIp": "203.0.113.7",
                         "principalOrgId": None, "accessKey": None,
                         "cognitoAuthenticationType": None, "cognitoAuthenticationProvider": None,
                         "userArn": None, "userAgent": headers.get("User-Agent"), "user": None,
                         "apiKey": None, "apiKeyId": None, "clientCert": None}},
        "body": body, "isBase64Encoded": False,
    }


def test_a_body_at_the_limit_fits_lambdas_6_mb_even_with_10_kb_of_headers():
    """The limit is derived from Lambda's ceiling (6,291,456 bytes for the whole
    event): a body whose event form is exactly at the limit, escaped the worst
    way (every non-ASCII character as \\uXXXX), with API Gateway's maximum of
    10 KB of request line and headers, written twice, still fits."""
    limit = api.TRAINING_BODY_LIMIT_BYTES
    assert api.LAMBDA_PAYLOAD_LIMIT_BYTES == 6_291_456
    row = 'é,"quoted",1.5\n'  # escapes: \u00e9, \", \n
    text = row * (limit // api.event_bytes(row.encode(), "text/csv"))
    text += "x" * (limit - api.event_bytes(text.encode(), "text/csv"))
    assert api.event_bytes(text.encode(), "text/csv") == limit
    headers = {"Content-Type": "text/csv", "User-Agent": "u" * 200,
               "X-Api-Key": "k" * 64, "X-Padding": '"' * 9000}
    query = {"C": "1", "max_iter": "1000", "holdout": "0.2", "header": "true"}
    event = json.dumps(_proxy_event(text, query, headers), ensure_ascii=True).encode()
    record("Security: AWS rules", "Lambda request payload",
           "a CSV body exactly at POST /models' limit (counted as its JSON-escaped event "
           "form), in a proxy event with 10 KB of headers written twice", 1,
           f"event {len(event):,} bytes of Lambda's {api.LAMBDA_PAYLOAD_LIMIT_BYTES:,}; "
           f"body limit {limit:,} event bytes")
    assert len(event) <= api.LAMBDA_PAYLOAD_LIMIT_BYTES


@pytest.mark.parametrize("route", ["/models", "/models/model_x"])
@pytest.mark.parametrize("kind", ["6.5 MB of CSV", "3.2 MB of newlines",
                                  "1.1 MB of control bytes"])
def test_a_body_lambda_would_refuse_is_our_413_not_api_gateways_error(aws, route, kind):
    """Between 6 and 10 MB API Gateway takes a request that Lambda then refuses;
    and a body under 6 MB can still pass 6 MB once escaped in the event. Each
    gets our 413, counted as the event counts it."""
    size = {"6.5 MB of CSV": 6.5, "3.2 MB of newlines": 3.2, "1.1 MB of control bytes": 1.1}[kind]
    filler = {"6.5 MB of CSV": b"5.1,3.5,1.4,0.2,setosa\n", "3.2 MB of newlines": b"\n",
              "1.1 MB of control bytes": b"\x01"}[kind]
    body = filler * int(size * MB / len(filler))
    assert api.event_bytes(body, "text/csv") > api.TRAINING_BODY_LIMIT_BYTES
    with Client(app) as client:
        response = client.http.post(route, headers=CSV, body=body)
    assert response.status_code == 413, response.body[:300]
    text = response.body.decode()
    assert "Lambda, which takes at most 6 MB per request" in text
    assert text.endswith("Send larger datasets through POST /uploads." if route == "/models"
                         else "Send fewer rows per request.")
    assert components.registry().page(10)[0] == []


def test_a_body_just_under_the_limit_is_taken(aws):
    row = b"5.1,3.5,1.4,0.2,setosa\n6.9,3.1,5.1,2.3,virginica\n"
    body = row * (api.TRAINING_BODY_LIMIT_BYTES // api.event_bytes(row, "text/csv"))
    assert len(body) > 5.6 * MB  # 5.98 MB: this CSV has a newline every 24 bytes
    with Client(app) as client:
        response = client.http.post("/models", headers=CSV, body=body)
    assert response.status_code == 201, response.body[:300]


def test_binary_media_types_count_as_base64():
    assert api.event_bytes(b"abcd", "application/octet-stream") == 8
    assert api.event_bytes(b"abcd", "text/csv; charset=utf-8") == 4
    assert api.event_bytes('"\\\n\t\x01é\U0001F600'.encode() + b"\xff", "text/csv") == (
        2 + 2 + 2 + 2 + 6 + 6 + 12 + 6)


# --- API keys on every deployed stage --------------------------------------------------

def _as_deployed(stage_name: str) -> dict:
    """What a stage's function sees in Lambda: its configuration's variables
    and the runtime's own."""
    return {**stage.stage_environment(stage_name),
            "AWS_LAMBDA_FUNCTION_NAME": f"ml-api-{stage_name}"}


@pytest.mark.parametrize("stage_name", STAGES)
def test_every_deployed_stage_requires_api_keys(monkeypatch, stage_name):
    for name in ("REQUIRE_API_KEY", "API_KEYS", "AWS_LAMBDA_FUNCTION_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in _as_deployed(stage_name).items():
        monkeypatch.setenv(name, value)
    keys = ApiKeys.from_env(lambda: _Parameters({"/ml-api/%s/api-keys" % stage_name: "k1"}))
    assert keys.required and keys.refusal(None)[0] == 401 and keys.refusal("k1") is None
    assert secrets.requires_api_keys(stage_name)
    assert stage.stage_environment(stage_name)["API_KEYS_PARAMETER"] in secrets.wanted(stage_name)
    record("Security: AWS rules", "API keys when deployed",
           f"the {stage_name} stage's variables as Lambda sets them, a request without "
           "X-Api-Key", 1, f"{keys.refusal(None)[0]}: {keys.refusal(None)[1]}")


class _Parameters:
    def __init__(self, values: dict):
        self._values = values

    def get_parameter(self, Name, WithDecryption):
        return {"Parameter": {"Value": self._values[Name]}}


def test_local_runs_stay_keyless_unless_asked(monkeypatch):
    for name in ("REQUIRE_API_KEY", "AWS_LAMBDA_FUNCTION_NAME", *stage.stage_environment()):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("MODEL_SIGNING_KEY", "local-key-0123456789")
    stage.apply("dev")
    assert not ApiKeys.from_env(lambda: None).required
    monkeypatch.setenv("REQUIRE_API_KEY", "true")
    stage.apply("dev")  # the caller's choice stays
    assert os.environ["REQUIRE_API_KEY"] == "true"


def test_a_keyless_stage_is_not_deployed_without_a_loud_opt_in(monkeypatch, capsys):
    keyless = {**stage.stage_environment("dev"), "REQUIRE_API_KEY": "false"}
    real = stage.stage_environment
    monkeypatch.setattr(stage, "stage_environment",
                        lambda name="dev": keyless if name == "dev" else real(name))
    problem = secrets.open_api_problem("dev", allow_open_api=False)
    assert problem and "anyone on the internet" in problem and "ALLOW_OPEN_API=yes" in problem
    assert secrets.open_api_problem("dev", allow_open_api=True) is None
    secrets.warn_open_api("dev")
    assert "WARNING: stage dev is deployed WITHOUT API keys" in capsys.readouterr().err
    # The stages as configured need no opt-in.
    monkeypatch.setattr(stage, "stage_environment", real)
    assert [secrets.open_api_problem(name, False) for name in STAGES] == [None] * len(STAGES)


def test_make_deploy_passes_the_opt_in_only_when_asked():
    def dry_run(*variables):
        return subprocess.run(["make", "-n", "deploy", "package", *variables],
                              cwd=stage.PROJECT_DIR, capture_output=True, text=True,
                              timeout=60).stdout

    default = dry_run()
    assert "-m infra.deploy --stage dev" in default and "--allow-open-api" not in default
    asked = dry_run("ALLOW_OPEN_API=yes", "STAGE=prod")
    assert "-m infra.deploy --stage prod --allow-open-api" in asked
    assert "-m infra.package --stage prod --allow-open-api" in asked
