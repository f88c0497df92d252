"""GET /openapi.json: served as JSON, a valid OpenAPI document, and it describes
exactly the routes Chalice knows. (tests/test_schemathesis.py checks it against
what the running stack answers.)"""
from __future__ import annotations

import json
import re

import pytest
from chalice.test import Client
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

import app
from chalicelib import api, components, openapi
from chalicelib.csvdata import FEATURE_ROWS_PATTERN
from chalicelib.registry import PAGE_TOKEN_SHAPE, PUBLIC_STATUS, STATUS_FILTERS
from chalicelib.service import MAX_TTL_HOURS

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _served(client: Client, headers: dict | None = None):
    return client.http.get("/openapi.json", headers=headers or {})


@pytest.fixture
def served(aws) -> dict:
    with Client(app.app) as client:
        answer = _served(client)
    assert answer.status_code == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    return json.loads(answer.body)


def test_the_document_is_served_as_json_and_is_valid_openapi_3_1(served):
    assert served == openapi.document()
    assert served["openapi"] == "3.1.0"
    validate(served)  # openapi-spec-validator, by the document's own version
    errors = [error.message for error in OpenAPIV31SpecValidator(served).iter_errors()]
    assert errors == []


def test_every_route_and_method_chalice_knows_is_described_and_nothing_else(served):
    routes = {(path, method.lower()) for path, methods in app.app.routes.items()
              for method in methods}
    described = {(path, method) for path, item in served["paths"].items()
                 for method in item if method in METHODS}
    assert described == routes


def test_path_parameters_are_declared_and_are_plain_strings(served):
    """The server answers 404 (not 400) for ids outside [A-Za-z0-9_-]{1,64}, so
    the document does not promise a pattern it does not enforce."""
    for path, item in served["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"]: p for p in item.get("parameters", []) if p["in"] == "path"}
        assert set(declared) == names, path
        for parameter in declared.values():
            assert parameter["required"] is True
            assert parameter["schema"] == {"type": "string"}, path


def test_every_operation_documents_api_keys_and_unavailability(served):
    """The key check (when on) and the 503 on AWS trouble apply to every route
    but the dashboard page, which touches neither keys nor AWS."""
    for path, item in served["paths"].items():
        for method in METHODS & set(item):
            operation = item[method]
            if path in ("/", "/dashboard"):
                assert operation["security"] == [{}]
                assert set(operation["responses"]) == {"200"}
                assert set(operation["responses"]["200"]["content"]) == {"text/html"}
                continue
            assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)
    assert served["security"] == [{}, {"ApiKey": []}]  # optional
    assert served["components"]["securitySchemes"]["ApiKey"] == {
        **served["components"]["securitySchemes"]["ApiKey"],
        "type": "apiKey", "in": "header", "name": "X-Api-Key"}
    unavailable = served["components"]["responses"]["Unavailable"]
    assert unavailable["headers"]["Retry-After"]["required"] is True


def test_the_document_agrees_with_the_code_it_describes(served):
    schemas = served["components"]["schemas"]
    status = schemas["ModelStatus"]["properties"]["status"]
    assert set(status["enum"]) == set(PUBLIC_STATUS.values())

    listing = {p["name"]: p for p in served["paths"]["/models"]["get"]["parameters"]}
    assert set(listing["status"]["schema"]["enum"]) == set(STATUS_FILTERS)
    assert set(listing) == {"status", "limit", "next"}
    # The page token's and the CSV bodies' patterns are the ones the code checks.
    assert listing["next"]["schema"]["pattern"] == f"^({PAGE_TOKEN_SHAPE})?$"
    for path, method in [("/models", "post"), ("/models/{model_id}", "get"),
                         ("/models/{model_id}", "post")]:
        csv_text = served["paths"][path][method]["requestBody"]["content"]["text/csv"]["schema"]
        assert csv_text == {"type": "string", "minLength": 1, "pattern": FEATURE_ROWS_PATTERN}

    training = {p["name"]: p["schema"]
                for p in served["paths"]["/models"]["post"]["parameters"]}
    assert tuple(training) == api.TRAINING_PARAMETERS
    assert training["ttl_hours"]["minimum"] == 1 / 60
    assert training["ttl_hours"]["maximum"] == MAX_TTL_HOURS

    # Status facts grow (metrics, options): the document must not forbid new ones.
    assert schemas["ModelStatus"]["additionalProperties"] is True
    # Fixed answers stay strict.
    for name in ("TrainingStarted", "ModelPage", "Predictions", "ModelTraining",
                 "TrainingFailed"):
        assert schemas[name]["additionalProperties"] is False, name


def test_each_call_hands_out_its_own_copy():
    first = openapi.document()
    first["paths"].clear()
    assert openapi.document()["paths"]


def test_with_api_keys_on_the_document_needs_a_key_too(aws, monkeypatch):
    """As every route: the prod stage, whose keys live in SSM."""
    from devstack import stage

    prod = stage.stage_environment("prod")
    aws.client("ssm").put_parameter(Name=prod["API_KEYS_PARAMETER"], Type="SecureString",
                                    Value="alpha-key")
    for name, value in prod.items():
        monkeypatch.setenv(name, value)
    components.reset()
    with Client(app.app, stage_name="prod") as client:
        missing = _served(client)
        wrong = _served(client, {"X-Api-Key": "beta-key"})
        right = _served(client, {"X-Api-Key": "alpha-key"})
    described = openapi.document()["paths"]["/openapi.json"]["get"]["responses"]
    for answer, status in ((missing, 401), (wrong, 403)):
        assert answer.status_code == status and str(status) in described
        assert answer.headers["Content-Type"].startswith("text/plain")
    assert right.status_code == 200
    assert json.loads(right.body) == openapi.document()
