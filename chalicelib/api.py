"""The HTTP face of the service: the seed's routes, status codes and texts."""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Callable

import orjson
from chalice import AuthResponse, Response
from chalice.app import APIGateway

from chalicelib import components, dashboard
from chalicelib.aws import is_aws_failure
from chalicelib.csvdata import CsvError
from chalicelib.logs import log
from chalicelib.security import ConfigurationError, TamperedArtifact
from chalicelib.serving import AnswerTooLarge, ArtifactMissing, encode_answer
from chalicelib.storage import artifact_key
from chalicelib.training import TrainingOptions
from chalicelib.service import (MAX_TTL_HOURS, InvalidRequest, ModelFailed, ModelNotFound,
                                ModelTraining)

# The seed's exact strings: its clients compare them.
TRAINING_CSV_REQUIRED = (
    "Please post data in csv format, and make sure the label column is the last column in the csv."
)
PREDICT_CSV_REQUIRED = "Please post data in csv format."
PREDICT_JSON_REQUIRED = ('Please post data in csv format, or as JSON '
                         '{"instances": [[feature, ...], ...]}.')
MODEL_NOT_FOUND = (
    "The model id you supplied either doesn't exist or the model_id provided is wrong."
)
TRAINING_STARTED = (
    "You're model is being trained right now, you can check it's status by hitting "
    "the check_task endpoint"
)

# Our ids are model_YYYYmmdd-HHMMSS_<hex>; anything outside this alphabet can't
# be one and never reaches an S3 key or a DynamoDB lookup.
_MODEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
RETRY_AFTER_SECONDS = 5

# Every content type reaches the handlers so they can answer with the seed's
# own 415 texts rather than Chalice's generic one.
ANY_CONTENT_TYPE = ["*/*"]


def _text(status: int, body: str, **headers: str) -> Response:
    return Response(body=body, status_code=status,
                    headers={"Content-Type": "text/plain; charset=utf-8", **headers})


def _json(status: int, body: dict) -> Response:
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json"})


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_csv(content_type: str | None) -> bool:
    return _media_type(content_type) == "text/csv"


def _not_ready(error: Exception) -> Response:
    """The answer for a model that cannot be used (yet): the seed's 404 and
    "Model is Training", or 409 with the reason training failed."""
    if isinstance(error, ModelNotFound):
        return _text(404, MODEL_NOT_FOUND)
    if isinstance(error, ModelTraining):
        return _json(200, {"status": "Model is Training"})
    return _json(409, {"status": "Training Failed", "error": str(error)})


def _unavailable_on_aws_failure(handler: Callable[..., Response]) -> Callable[..., Response]:
    """AWS trouble (emulator down, throttling, timeouts) becomes a 503 with Retry-After."""
    @functools.wraps(handler)
    def wrapper(*args, **kwargs) -> Response:
        try:
            return handler(*args, **kwargs)
        except ConfigurationError as error:
            log("configuration.error", level=logging.ERROR, error=str(error))
            return _text(503, f"The service is misconfigured: {error}.",
                         **{"Retry-After": str(RETRY_AFTER_SECONDS * 12)})
        except Exception as error:
            if not is_aws_failure(error):
                raise
            log("aws.unavailable", level=logging.WARNING, handler=handler.__name__,
                error=f"{type(error).__name__}: {error}")
            # The detail (endpoints, bucket, ARNs) goes to the log, not the client.
            return _text(503, "The model store is unavailable right now; retry later.",
                         **{"Retry-After": str(RETRY_AFTER_SECONDS)})
    return wrapper


# API Gateway accepts 10 MB, but hands the request to Lambda as a synchronous
# invocation whose payload, the whole proxy event, holds at most 6 MB: over
# that, Lambda refuses it ("Request must be smaller than 6291456 bytes") and
# the client gets API Gateway's error instead of our 413. The body sits in
# the event as a JSON string: as text, escaped, unless its Content-Type is one
# of the API's binary media types (Chalice's defaults: application/octet-stream,
# images, ...; not text/csv nor application/json), which arrive base64-encoded.
LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024
# The rest of the event: headers and query string twice (headers and
# multiValueHeaders; API Gateway caps the request line and headers at 10 KB),
# requestContext, path and the like.
EVENT_ALLOWANCE_BYTES = 64 * 1024
# Both limits count bytes of the body as the event holds it (event_bytes()):
# 6,225,920, about 5.7 MB of a CSV of short numeric rows (each newline is 2).
TRAINING_BODY_LIMIT_BYTES = LAMBDA_PAYLOAD_LIMIT_BYTES - EVENT_ALLOWANCE_BYTES
PREDICT_BODY_LIMIT_BYTES = TRAINING_BODY_LIMIT_BYTES
BINARY_MEDIA_TYPES = tuple(APIGateway().default_binary_types)
# No byte takes more than 6 in the event ('\u0001', or '\ufffd' for a byte
# that is not UTF-8): bodies this small fit whatever they hold.
_ALWAYS_FITS_BYTES = TRAINING_BODY_LIMIT_BYTES // 6


def event_bytes(body: bytes, content_type: str | None) -> int:
    """The bytes `body` takes in the Lambda event, at most: base64 for a binary
    media type; otherwise the JSON string of the body decoded as UTF-8, with
    everything outside ASCII escaped (API Gateway may keep UTF-8 as it is,
    which is shorter). The CLI and the dashboard count the same way."""
    if _media_type(content_type) in BINARY_MEDIA_TYPES:
        return 4 * -(-len(body) // 3)
    return len(json.dumps(body.decode("utf-8", "replace"))) - 2


def _too_large(body: bytes, content_type: str | None, limit: int, what: str,
               advice: str) -> Response | None:
    if len(body) <= _ALWAYS_FITS_BYTES:
        return None
    size = event_bytes(body, content_type)
    if size <= limit:
        return None
    return _text(413, f"The body is {len(body) / 2**20:.2f} MB, {size / 2**20:.2f} MB as API "
                      f"Gateway passes it to Lambda, which takes at most 6 MB per request: "
                      f"{what} may take at most {limit / 2**20:.2f} MB there. {advice}")


def authorize(presented: str | None) -> AuthResponse:
    """API Gateway's check, as a Chalice authorizer that runs before the route's
    Lambda: every route for a valid key, none otherwise (API Gateway answers
    401 without the header, 403 for a key that is not valid). Fails closed."""
    try:
        refusal = components.api_keys().refusal(presented)
    except Exception as error:
        log("authorizer.error", level=logging.ERROR, error=f"{type(error).__name__}: {error}")
        refusal = (503, "unavailable")
    if refusal is None:
        return AuthResponse(routes=["*"], principal_id="api-key")
    return AuthResponse(routes=[], principal_id="refused")


@_unavailable_on_aws_failure
def check_api_key(route: str, headers) -> Response | None:
    """None when the request may go on; else the 401/403 answer, the same for
    every route and id so it never tells whether a model exists. The dashboard
    page holds no data and asks for the key itself, so it is served without one."""
    if route in dashboard.PAGE_PATHS:
        return None
    refusal = components.api_keys().refusal(headers.get("x-api-key"))
    return None if refusal is None else _text(*refusal)


def _known_parameters(query: dict | None, known: tuple[str, ...]) -> dict:
    query = query or {}
    unknown = sorted(set(query) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}; this route takes "
                             + (", ".join(known) or "none"))
    return query


def _number(query: dict, name: str, low: float, high: float, whole: bool = False):
    text = query.get(name)
    if text is None:
        return None
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not (low <= value <= high):  # NaN fails too
        kind = "a whole number" if whole else "a number"
        raise InvalidRequest(f"{name} must be {kind} from {low:g} to {high:g}, not {text!r}")
    return value


def _boolean(query: dict, name: str, default: bool) -> bool:
    text = query.get(name)
    if text is None:
        return default
    if text.lower() not in ("true", "false"):
        raise InvalidRequest(f"{name} must be true or false, not {text!r}")
    return text.lower() == "true"


def _choice(query: dict, name: str, choices: tuple[str, ...]) -> str | None:
    text = query.get(name)
    if text is not None and text not in choices:
        raise InvalidRequest(f"{name} must be {' or '.join(choices)}, not {text!r}")
    return text


TRAINING_PARAMETERS = ("ttl_hours", "C", "max_iter", "class_weight", "fit_intercept",
                       "holdout", "header")


def _training_request(query: dict | None) -> tuple[float | None, TrainingOptions]:
    query = _known_parameters(query, TRAINING_PARAMETERS)
    defaults = TrainingOptions()
    C = _number(query, "C", 1e-6, 1e6)
    max_iter = _number(query, "max_iter", 1, 100_000, whole=True)
    options = TrainingOptions(
        C=defaults.C if C is None else C,
        max_iter=defaults.max_iter if max_iter is None else max_iter,
        class_weight=_choice(query, "class_weight", ("balanced",)),
        fit_intercept=_boolean(query, "fit_intercept", defaults.fit_intercept),
        holdout=_number(query, "holdout", 0, 0.5),
        header=_boolean(query, "header", defaults.header))
    return _number(query, "ttl_hours", 1 / 60, MAX_TTL_HOURS), options


@_unavailable_on_aws_failure
def create_model(content_type: str | None, body: bytes, query: dict | None = None) -> Response:
    too_large = _too_large(body, content_type, TRAINING_BODY_LIMIT_BYTES,
                           "training data sent to POST /models",
                           "Send larger datasets through POST /uploads.")
    if too_large:
        return too_large
    try:
        ttl_hours, options = _training_request(query)
    except InvalidRequest as error:
        return _text(400, str(error))
    if _media_type(content_type) == "application/json":
        return _create_from_upload(body, ttl_hours, options)
    if not _is_csv(content_type):
        return _text(415, TRAINING_CSV_REQUIRED)
    try:
        submission = components.service().submit(body, ttl_hours, options)
    except CsvError as error:
        return _text(415, f"{TRAINING_CSV_REQUIRED}\n{error}")
    return _created(submission)


@_unavailable_on_aws_failure
def predict(model_id: str, content_type: str | None, body: bytes) -> Response:
    too_large = _too_large(body, content_type, PREDICT_BODY_LIMIT_BYTES,
                           "a prediction request", "Send fewer rows per request.")
    if too_large:
        return too_large
    as_json = _media_type(content_type) == "application/json"
    if not (as_json or _is_csv(content_type)):
        return _text(415, PREDICT_CSV_REQUIRED)
    if not _MODEL_ID.fullmatch(model_id):
        return _text(404, MODEL_NOT_FOUND)
    try:
        answer = components.service().predict(model_id, body, as_json, _answer_limit())
        encoded = encode_answer(answer, _answer_limit())
    except AnswerTooLarge as error:
        return _answer_too_large(error)
    except (ModelNotFound, ModelTraining, ModelFailed) as error:
        return _not_ready(error)
    except CsvError as error:
        first = PREDICT_JSON_REQUIRED if as_json else PREDICT_CSV_REQUIRED
        return _text(415, f"{first}\n{error}")
    except (ArtifactMissing, TamperedArtifact) as error:
        return _unusable_artifact(model_id, error)
    return Response(body=encoded.decode(), status_code=202,
                    headers={"Content-Type": "application/json"})


def _unusable_artifact(model_id: str, error: ArtifactMissing | TamperedArtifact) -> Response:
    if isinstance(error, ArtifactMissing):
        _, name = error.args
        return _text(409, f"Model {model_id} is marked ready but its artifact "
                          f"{artifact_key(model_id, name)} is missing from "
                          "storage; train it again.")
    log("artifact.tampered", level=logging.ERROR, model_id=model_id, error=str(error))
    return _text(409, f"Model {model_id} cannot be used: {error}; it was changed "
                      "outside ml-api. Train it again.")


# Lambda returns at most 6 MB from a synchronous call, counted on the whole
# proxy response: the body (as a JSON string) and what surrounds it. A predict
# request never builds an answer that cannot fit (chalicelib.serving): the
# 500,000 rows of a 1 MB body for a 300-class model are refused before
# predicting, not after a 3 GB answer.
RESPONSE_LIMIT_BYTES = 6 * 1024 * 1024
_RESPONSE_OVERHEAD_BYTES = 2048


def _answer_limit() -> int:
    """What the body may take (read at each call: tests lower RESPONSE_LIMIT_BYTES)."""
    return RESPONSE_LIMIT_BYTES - _RESPONSE_OVERHEAD_BYTES


def _answer_too_large(error: AnswerTooLarge) -> Response:
    size = (error.size + _RESPONSE_OVERHEAD_BYTES) / 1e6
    return _text(413, f"The answer for {error.rows} rows would be "
                      f"{'' if error.exact else 'at least '}{size:.1f} MB, over Lambda's "
                      f"{RESPONSE_LIMIT_BYTES // 2**20} MB response limit; send at most "
                      f"{error.fitting} rows per request.")


def _created(submission) -> Response:
    return _json(201, {"message": TRAINING_STARTED, "model_id": submission.model_id,
                       "task_id": submission.task_id})


def _create_from_upload(body: bytes, ttl_hours, options) -> Response:
    """POST /models with {"upload_id": ...}: train on what was PUT to /uploads' URL."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if not isinstance(document, dict) or set(document) != {"upload_id"} \
            or not isinstance(document["upload_id"], str):
        return _text(415, f"{TRAINING_CSV_REQUIRED}\nA JSON body must be "
                          '{"upload_id": "..."} from POST /uploads.')
    try:
        submission = components.service().submit_upload(document["upload_id"], ttl_hours,
                                                         options)
    except InvalidRequest as error:
        return _text(400, str(error))
    return _created(submission)


@_unavailable_on_aws_failure
def new_upload() -> Response:
    return _json(201, components.service().new_upload())


@_unavailable_on_aws_failure
def list_models(query: dict | None) -> Response:
    try:
        query = _known_parameters(query, ("limit", "status", "next"))
        limit = _number(query, "limit", 1, 100, whole=True) or 20
        page = components.service().page(limit, query.get("next"), query.get("status"))
    except InvalidRequest as error:
        return _text(400, str(error))
    return _json(200, page)


@_unavailable_on_aws_failure
def artifact(model_id: str) -> Response:
    if not _MODEL_ID.fullmatch(model_id):
        return _text(404, MODEL_NOT_FOUND)
    try:
        return _json(200, components.service().download(model_id))
    except (ModelNotFound, ModelTraining, ModelFailed) as error:
        return _not_ready(error)
    except (ArtifactMissing, TamperedArtifact) as error:
        return _unusable_artifact(model_id, error)


@_unavailable_on_aws_failure
def delete_model(model_id: str) -> Response:
    if not _MODEL_ID.fullmatch(model_id):
        return _text(404, MODEL_NOT_FOUND)
    try:
        components.service().delete(model_id)
    except ModelNotFound:
        return _text(404, MODEL_NOT_FOUND)
    return Response(body="", status_code=204)


@_unavailable_on_aws_failure
def model_status(model_id: str) -> Response:
    if not _MODEL_ID.fullmatch(model_id):
        return _text(404, MODEL_NOT_FOUND)
    try:
        record = components.service().record(model_id)
    except ModelNotFound:
        return _text(404, MODEL_NOT_FOUND)
    return _json(200, record.public())
