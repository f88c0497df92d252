"""The HTTP face of batch predictions (chalicelib.batches): submit, status, delete."""
from __future__ import annotations

import orjson
from chalice import Response

from chalicelib import components
from chalicelib.api import (_MODEL_ID, MODEL_NOT_FOUND, PREDICT_CSV_REQUIRED,
                            TRAINING_BODY_LIMIT_BYTES, _is_csv, _json, _media_type, _not_ready,
                            _text, _too_large, _unavailable_on_aws_failure)
from chalicelib.batches import BatchNotFound, BatchStatus
from chalicelib.csvdata import CsvError, stream_features
from chalicelib.registry import Status
from chalicelib.service import _UPLOAD_ID, ModelFailed, ModelNotFound, ModelTraining

BATCH_BODY_REQUIRED = ('Please post data in csv format (feature rows, no label), or JSON '
                       '{"upload_id": "..."} naming a file sent through POST /uploads.')
BATCH_NOT_FOUND = "The batch id you supplied doesn't exist (or the batch was deleted)."


def _servable(model_id: str):
    """The model's record if it can serve; ModelNotFound, ModelTraining or ModelFailed if not."""
    record = components.service().record(model_id)
    if record.status == Status.FAILED:
        raise ModelFailed(record.error or "unknown error")
    if record.status != Status.READY:
        raise ModelTraining(model_id)
    return record


@_unavailable_on_aws_failure
def submit(model_id: str, content_type: str | None, body: bytes) -> Response:
    too_large = _too_large(body, content_type, TRAINING_BODY_LIMIT_BYTES,
                           "a batch's CSV posted to the API",
                           'Send larger files through POST /uploads, then {"upload_id": ...}.')
    if too_large:
        return too_large
    as_json = _media_type(content_type) == "application/json"
    if not (as_json or _is_csv(content_type)):
        return _text(415, BATCH_BODY_REQUIRED)
    if not _MODEL_ID.fullmatch(model_id):
        return _text(404, MODEL_NOT_FOUND)
    try:
        record = _servable(model_id)
    except (ModelNotFound, ModelFailed) as error:
        return _not_ready(error)
    except ModelTraining:
        return _json(409, {"status": "Model is Training",
                           "error": f"model {model_id} is still training; submit the batch "
                                    "once it is ready"})
    upload_id = None
    if as_json:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict) or set(document) != {"upload_id"} \
                or not isinstance(document["upload_id"], str):
            return _text(415, f"{BATCH_BODY_REQUIRED}\nThe JSON body is not "
                              '{"upload_id": "..."}.')
        upload_id = document["upload_id"]
        if not _UPLOAD_ID.fullmatch(upload_id):
            return _text(400, "upload_id is not one POST /uploads handed out")
    else:
        # A posted body is small: checked here, with the parser the batch uses.
        try:
            for _ in stream_features(body, record.n_features):
                pass
        except CsvError as error:
            return _text(415, f"{PREDICT_CSV_REQUIRED}\n{error}")
    try:
        batch = components.batches().submit(model_id, None if as_json else body, upload_id)
    except LookupError:
        return _text(400, f"upload {upload_id} holds no file: nothing was sent to its form "
                          "yet, or it was deleted")
    return _json(202, {"batch_id": batch.batch_id, "status": str(BatchStatus.QUEUED),
                       "model_id": model_id})


@_unavailable_on_aws_failure
def status(batch_id: str) -> Response:
    try:
        return _json(200, components.batches().status(batch_id))
    except BatchNotFound:
        return _text(404, BATCH_NOT_FOUND)


@_unavailable_on_aws_failure
def delete(batch_id: str) -> Response:
    try:
        components.batches().delete(batch_id)
    except BatchNotFound:
        return _text(404, BATCH_NOT_FOUND)
    return Response(body="", status_code=204)
