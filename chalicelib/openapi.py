"""GET /openapi.json: the API described in OpenAPI 3.1, written by hand as data.

Nothing here is derived from the handlers: the document says what clients may
rely on. tests/test_openapi.py checks it with openapi-spec-validator and
against the routes Chalice knows; tests/test_schemathesis.py checks what the
running stack answers against it.

Response schemas are strict (no extra properties) where the app's answer is
fixed, and open where it is a set of facts that grows (status facts, the
artifact's description). This module imports nothing from the rest of the
app, so the document can be served even where another module fails to load.
"""
from __future__ import annotations

import copy
from typing import Any

from chalice import Response

OPENAPI_VERSION = "3.1.0"

_MODEL_ID_SHAPE = "^[A-Za-z0-9_-]{1,64}$"
_UPLOAD_ID_SHAPE = "^upload_[0-9a-f]{24}$"
_ISO_SECOND = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
# Where the previous page stopped: "<created_at>.<model_id>" (registry.PAGE_TOKEN_SHAPE);
# empty is the first page. Every token of this shape is accepted.
_PAGE_TOKEN_SHAPE = ("^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
                     "\\.[A-Za-z0-9_-]{1,64})?$")
# CSV text holds at least one value: a character that is not whitespace, a
# comma or a BOM (csvdata.FEATURE_ROWS_PATTERN); blank bodies are refused.
_CSV_TEXT = {"type": "string", "minLength": 1, "pattern": "[^\\s,\ufeff]"}
# JSON numbers that are 64-bit floats (larger ones are refused as not JSON).
_FEATURE_VALUE = {"type": "number", "minimum": -1.7976931348623157e308,
                  "maximum": 1.7976931348623157e308}


def _text(description: str, **extra: Any) -> dict:
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}}, **extra}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict:
    return _ref("schemas", name)


def _dashboard(operation_id: str) -> dict:
    return {"get": {
        "operationId": operation_id,
        "summary": "The dashboard: one self-contained HTML page that lists, trains and "
                   "predicts through this API. Served without a key; it asks for one.",
        "security": [{}],
        "responses": {"200": {"description": "The page.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }}


def _response(name: str) -> dict:
    return _ref("responses", name)


# Every route may answer these: the API key check (when it is on) runs before
# any handler, and AWS trouble anywhere becomes a 503.
_EVERY_ROUTE = {"401": _response("MissingApiKey"), "403": _response("WrongApiKey"),
                "503": _response("Unavailable")}

_TRAINING_CSV = ("5.1,3.5,1.4,0.2,setosa\n4.9,3.0,1.4,0.2,setosa\n"
                 "7.0,3.2,4.7,1.4,versicolor\n6.4,3.2,4.5,1.5,versicolor\n")

_SCHEMAS: dict[str, dict] = {
    "Label": {
        "description": "A class label, with the type it had in the training CSV "
                       "(\"setosa\", 1, 2.5).",
        "type": ["string", "number"],
    },
    "TrainingStarted": {
        "type": "object",
        "required": ["message", "model_id", "task_id"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string"},
            "model_id": {"type": "string", "pattern": _MODEL_ID_SHAPE},
            "task_id": {"type": "string", "format": "uuid"},
        },
    },
    "ModelStatus": {
        "description": "A model's status facts. More facts may be added; clients "
                       "should ignore the ones they do not know.",
        "type": "object",
        "required": ["status", "model_id", "task_id", "created_at", "n_rows", "n_features"],
        "additionalProperties": True,
        "properties": {
            "status": {"type": "string",
                       "enum": ["Model is Training", "Ready to Use", "Training Failed"]},
            "model_id": {"type": "string", "pattern": _MODEL_ID_SHAPE},
            "task_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time", "pattern": _ISO_SECOND},
            "n_rows": {"type": ["integer", "null"], "minimum": 1,
                       "description": "null until the trainer has read an uploaded dataset."},
            "n_features": {"type": ["integer", "null"], "minimum": 1},
            "classes": {"type": "array", "items": _schema("Label"),
                        "description": "Once the model is ready, in the order of "
                                       "prediction_probability's columns."},
            "error": {"type": "string", "description": "Why training failed."},
            "expires_at": {"type": "string", "format": "date-time", "pattern": _ISO_SECOND,
                           "description": "From then on every route answers 404 for the "
                                          "model (POST /models?ttl_hours=N)."},
            "options": {"type": "object", "additionalProperties": True,
                        "description": "The training options the model was trained with."},
            "feature_names": {"type": "array", "items": {"type": "string"},
                              "description": "From the CSV's header row (header=true)."},
            "metrics": {"type": "object", "additionalProperties": True,
                        "description": "How well the model did, once it is ready."},
        },
    },
    "ModelPage": {
        "type": "object",
        "required": ["models", "next"],
        "additionalProperties": False,
        "properties": {
            "models": {"type": "array", "items": _schema("ModelStatus"),
                       "description": "Newest first."},
            "next": {"type": ["string", "null"],
                     "description": "The next page's token; null after the last page."},
        },
    },
    "Predictions": {
        "type": "object",
        "required": ["predictions", "prediction_probability"],
        "additionalProperties": False,
        "properties": {
            "predictions": {"type": "array", "items": _schema("Label"),
                            "description": "One label per row, in order."},
            "prediction_probability": {
                "type": "array",
                "description": "One row per row sent, one column per class (in the order "
                               "of the status' classes).",
                "items": {"type": "array", "minItems": 2,
                          "items": {"type": "number", "minimum": 0, "maximum": 1}},
            },
        },
    },
    "ModelTraining": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "Model is Training"}},
    },
    "TrainingFailed": {
        "type": "object",
        "required": ["status", "error"],
        "additionalProperties": False,
        "properties": {"status": {"const": "Training Failed"}, "error": {"type": "string"}},
    },
    "Artifact": {
        "description": "Where to download the fitted scikit-learn pipeline.",
        "type": "object",
        "required": ["model_id", "url", "expires_in", "scikit_learn_version", "sha256",
                     "classes"],
        "additionalProperties": True,
        "properties": {
            "model_id": {"type": "string", "pattern": _MODEL_ID_SHAPE},
            "url": {"type": "string", "format": "uri",
                    "description": "A presigned S3 URL to the pickled pipeline."},
            "expires_in": {"type": "integer", "minimum": 1,
                           "description": "Seconds the URL stays valid."},
            "format": {"type": "string"},
            "scikit_learn_version": {"type": "string",
                                     "description": "Unpickle with this version."},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                       "description": "SHA-256 (hex) of the pickle's bytes: check the "
                                      "download against it before unpickling."},
            "classes": {"type": "array", "items": _schema("Label")},
            "metrics_url": {"type": "string", "format": "uri",
                            "description": "A presigned S3 URL to the whole metrics (JSON), "
                                           "present when their per-class figures were too "
                                           "large for the status answer."},
        },
    },
    "Upload": {
        "description": "A presigned S3 POST for a dataset too large to post to the API "
                       "(over about 5.9 MB: Lambda's 6 MB request limit): send a "
                       "multipart/form-data POST to url with every field of fields, then the "
                       "CSV as the form's last field, named file; then POST /models with "
                       "{\"upload_id\": ...} trains it. (Earlier versions answered with a "
                       "presigned PUT: method PUT, url and headers.)",
        "type": "object",
        "required": ["upload_id", "method", "url", "fields", "max_bytes", "expires_in"],
        "additionalProperties": False,
        "properties": {
            "upload_id": {"type": "string", "pattern": _UPLOAD_ID_SHAPE},
            "method": {"const": "POST"},
            "url": {"type": "string", "format": "uri",
                    "description": "Where to POST the form (the bucket's S3 URL)."},
            "fields": {"type": "object", "additionalProperties": {"type": "string"},
                       "required": ["key", "policy", "Content-Type", "tagging"],
                       "description": "The form fields, in this order, before the file: the "
                                      "key, the signed policy (SigV4: x-amz-algorithm, "
                                      "x-amz-credential, x-amz-date, x-amz-signature), "
                                      "Content-Type text/csv and the upload's tag."},
            "max_bytes": {"type": "integer", "minimum": 1,
                          "description": "The largest file S3 accepts for this form "
                                         "(the signed policy's content-length-range)."},
            "expires_in": {"type": "integer", "minimum": 1,
                           "description": "Seconds the form stays valid."},
        },
    },
    "UploadReference": {
        "type": "object",
        "required": ["upload_id"],
        "additionalProperties": False,
        "properties": {"upload_id": {"type": "string", "pattern": _UPLOAD_ID_SHAPE}},
    },
    "Instances": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array", "minItems": 1,
                "description": "Feature rows, each with as many numbers as the model "
                               "has features.",
                "items": {"type": "array", "minItems": 1, "items": _FEATURE_VALUE},
            },
        },
    },
    "Records": {
        "description": "For a model trained with header=true: rows by feature name, "
                       "each with exactly the model's feature_names. (With instances "
                       "too, instances are read.)",
        "type": "object",
        "required": ["records"],
        "not": {"required": ["instances"]},
        "properties": {
            "records": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "additionalProperties": _FEATURE_VALUE},
            },
        },
    },
}

_RESPONSES: dict[str, dict] = {
    "NotFound": _text("The model id you supplied either doesn't exist or the model_id "
                      "provided is wrong. (Also for ids outside [A-Za-z0-9_-]{1,64}, for "
                      "expired and for deleted models.)"),
    "BadParameter": _text("Names the bad or unknown query parameter, or the bad token."),
    "TooLarge": _text("The request body or the answer is over Lambda's 6 MB. A body counts "
                      "as API Gateway passes it to Lambda, as a JSON string (about 5.9 MB of "
                      "CSV); an answer's text says how many rows fit."),
    "MissingApiKey": _text("No X-Api-Key header, while API keys are required."),
    "WrongApiKey": _text("An X-Api-Key that is not one of the accepted keys."),
    "Unavailable": _text(
        "S3, DynamoDB or SQS cannot be reached, or the service is misconfigured.",
        headers={"Retry-After": {"description": "Seconds to wait before retrying.",
                                 "required": True,
                                 "schema": {"type": "integer", "minimum": 1}}}),
}

_MODEL_ID_PARAMETER = {
    "name": "model_id", "in": "path", "required": True,
    "description": "A model id as POST /models handed it out. Ids outside "
                   "[A-Za-z0-9_-]{1,64} are answered like unknown ones (404).",
    "schema": {"type": "string"},
}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_TRAINING_PARAMETERS = [
    _query("ttl_hours", {"type": "number", "minimum": 1 / 60, "maximum": 24 * 365},
           "The model expires this many hours after submission (1 minute to 1 year)."),
    _query("C", {"type": "number", "minimum": 1e-6, "maximum": 1e6},
           "Inverse regularization strength of the logistic regression."),
    _query("max_iter", {"type": "integer", "minimum": 1, "maximum": 100000},
           "Iterations the solver may take."),
    _query("class_weight", {"type": "string", "enum": ["balanced"]},
           "Weight classes inversely to their frequency; unweighted without it."),
    _query("fit_intercept", {"type": "boolean"}, "Fit an intercept (default true)."),
    _query("holdout", {"type": "number", "minimum": 0, "maximum": 0.5},
           "Share of the rows held out to measure the model (its metrics)."),
    _query("header", {"type": "boolean"},
           "The CSV's first row names the columns (default false)."),
]

_PREDICT_BODY = {
    "required": True,
    "description": "Feature rows (no label), as CSV (no header row) or as JSON.",
    "content": {
        "text/csv": {"schema": _CSV_TEXT, "example": "6.9,3.1,5.1,2.3\n"},
        "application/json": {"schema": {"anyOf": [_schema("Instances"), _schema("Records")]},
                             "example": {"instances": [[6.9, 3.1, 5.1, 2.3]]}},
    },
}


_UNUSABLE_MODEL = {
    "description": "Training failed (JSON), or the model's artifact is missing or was "
                   "changed outside ml-api (text).",
    "content": {"application/json": {"schema": _schema("TrainingFailed")},
                "text/plain": {"schema": {"type": "string"}}},
}


def _predict(operation_id: str, summary: str) -> dict:
    return {
        "operationId": operation_id,
        "summary": summary,
        "requestBody": _PREDICT_BODY,
        "responses": {
            "202": _json("One prediction per row, in order.", _schema("Predictions")),
            "200": _json("The model is still training.", _schema("ModelTraining")),
            "404": _response("NotFound"),
            "409": _UNUSABLE_MODEL,
            "413": _response("TooLarge"),
            "415": _text(
                "'Please post data in csv format.' (for JSON, a sentence naming the shapes it "
                "takes), then on a second line what is wrong with the rows. Also for bodies "
                "of the documented shapes that this model cannot take: rows with another "
                "number of values than the model's n_features, CSV values that are not "
                "numbers, records without a header model or without exactly its "
                "feature_names, values too large for the model's arithmetic. A body that "
                "is not of the documented shapes is refused so in every state of an "
                "existing model (a training model answers 200 to well-formed bodies only)."),
            **_EVERY_ROUTE,
        },
    }


def _status(operation_id: str, summary: str) -> dict:
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            "200": _json("The model's status facts.", _schema("ModelStatus")),
            "404": _response("NotFound"),
            **_EVERY_ROUTE,
        },
    }


# What a client does next with the model POST /models answered with (also
# how schemathesis' stateful phase chains requests).
_MODEL_LINKS = {
    name: {"operationId": operation_id, "parameters": {"model_id": "$response.body#/model_id"},
           "description": description}
    for name, operation_id, description in [
        ("GetModelStatus", "getModelStatus", "Poll the status until it is not training."),
        ("CheckModelStatus", "checkModelStatus", "The same, with POST."),
        ("Predict", "predict", "Predict, once ready."),
        ("PredictWithPost", "predictWithPost", "Predict with POST, once ready."),
        ("GetModelArtifact", "getModelArtifact", "Download the fitted pipeline, once ready."),
        ("DeleteModel", "deleteModel", "Remove the model."),
    ]
}


_PATHS: dict[str, dict] = {
    "/models": {
        "post": {
            "operationId": "createModel",
            "summary": "Train a model from CSV (features, then the label last).",
            "parameters": _TRAINING_PARAMETERS,
            "requestBody": {
                "required": True,
                "description": "CSV rows of numeric features with the label last; no header "
                               "row unless header=true. Or, for a dataset sent to the form "
                               "of POST /uploads, the upload's id as JSON: it is checked when it "
                               "is trained, and problems end in \"Training Failed\".",
                "content": {"text/csv": {"schema": _CSV_TEXT, "example": _TRAINING_CSV},
                            "application/json": {"schema": _schema("UploadReference")}},
            },
            "responses": {
                "201": {**_json("Training has started; poll /check_model_status/{model_id}.",
                                _schema("TrainingStarted")),
                        "links": _MODEL_LINKS},
                "400": _text("Names the bad or unknown query parameter, or the upload_id "
                             "that POST /uploads did not hand out."),
                "413": _response("TooLarge"),
                "415": _text("Please post data in csv format, and make sure the label column "
                             "is the last column in the csv. (then, on a second line, what is "
                             "wrong with the CSV). Also for CSV text the schema cannot "
                             "describe: values that are not numbers, rows of different "
                             "lengths, fewer than two classes or more than the class cap, a "
                             "header row without header=true (or none with it); and for a "
                             "JSON body other than {\"upload_id\": ...}."),
                **_EVERY_ROUTE,
            },
        },
        "get": {
            "operationId": "listModels",
            "summary": "The models, newest first, a page at a time.",
            "parameters": [
                _query("status", {"type": "string", "enum": ["training", "ready", "failed"]},
                       "Only models in this state."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                       "Models looked at for this page (a filtered page may hold fewer)."),
                _query("next", {"type": "string", "pattern": _PAGE_TOKEN_SHAPE},
                       "The previous page's next: where it stopped, the creation time and "
                       "id of its last model. Any token of this shape is a position: the "
                       "page lists the models created before it. Empty: the first page."),
            ],
            "responses": {
                "200": _json("One page; follow next until it is null.", _schema("ModelPage")),
                "400": _response("BadParameter"),
                **_EVERY_ROUTE,
            },
        },
    },
    "/uploads": {
        "post": {
            "operationId": "createUpload",
            "summary": "A presigned S3 form (one hour) to POST a dataset too large to "
                       "post to the API.",
            "responses": {
                "201": _json("POST the fields, then the CSV as the file field, to url; then "
                             "POST /models with {\"upload_id\": ...}.", _schema("Upload")),
                **_EVERY_ROUTE,
            },
        },
    },
    "/models/{model_id}": {
        "parameters": [_MODEL_ID_PARAMETER],
        "get": _predict("predict", "Predict (a GET with a body, as in the original service)."),
        "post": _predict("predictWithPost",
                         "Predict (the same as GET, for tools that cannot send a GET body)."),
        "delete": {
            "operationId": "deleteModel",
            "summary": "Remove the model, its dataset and its artifacts.",
            "responses": {
                "204": {"description": "Deleted."},
                "404": _response("NotFound"),
                **_EVERY_ROUTE,
            },
        },
    },
    "/models/{model_id}/artifact": {
        "parameters": [_MODEL_ID_PARAMETER],
        "get": {
            "operationId": "getModelArtifact",
            "summary": "A presigned link (one hour) to the pickled scikit-learn pipeline.",
            "responses": {
                "200": _json("The link and how to use it, or the model is still training.",
                             {"anyOf": [_schema("Artifact"), _schema("ModelTraining")]}),
                "404": _response("NotFound"),
                "409": _UNUSABLE_MODEL,
                **_EVERY_ROUTE,
            },
        },
    },
    "/check_model_status/{model_id}": {
        "parameters": [_MODEL_ID_PARAMETER],
        "get": _status("getModelStatus", "The model's status and facts."),
        "post": _status("checkModelStatus",
                        "The model's status and facts (POST, as in the original service)."),
    },
    "/": _dashboard("getDashboard"),
    "/dashboard": _dashboard("getDashboardPage"),
    "/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "responses": {
                "200": _json("OpenAPI 3.1.", {"type": "object"}),
                **_EVERY_ROUTE,
            },
        },
    },
}

# Batch predictions (chalicelib.batches): kept together, added to the above.
_BATCH_ID_SHAPE = "^batch_[0-9a-f]{24}$"
_SCHEMAS.update({
    "BatchQueued": {
        "type": "object",
        "required": ["batch_id", "status", "model_id"],
        "additionalProperties": False,
        "properties": {
            "batch_id": {"type": "string", "pattern": _BATCH_ID_SHAPE},
            "status": {"const": "Queued"},
            "model_id": {"type": "string", "pattern": _MODEL_ID_SHAPE},
        },
    },
    "BatchStatus": {
        "type": "object",
        "required": ["batch_id", "model_id", "status", "rows_done", "rows", "created_at"],
        "properties": {
            "batch_id": {"type": "string", "pattern": _BATCH_ID_SHAPE},
            "model_id": {"type": "string", "pattern": _MODEL_ID_SHAPE},
            "status": {"enum": ["Queued", "Running", "Done", "Failed"]},
            "rows_done": {"type": "integer", "minimum": 0},
            "rows": {"description": "The rows predicted, once Done.",
                     "type": ["integer", "null"], "minimum": 0},
            "input_bytes": {"type": ["integer", "null"], "minimum": 0},
            "bytes_done": {"type": "integer", "minimum": 0},
            "created_at": {"type": "string", "pattern": _ISO_SECOND},
            "updated_at": {"type": ["string", "null"], "pattern": _ISO_SECOND},
            "expires_at": {"type": "string", "pattern": _ISO_SECOND},
            "error": {"description": "Why it failed: the row and the reason, for a bad row.",
                      "type": "string"},
            "result_url": {"description": "When Done: a presigned GET of the results CSV "
                                          "(row,label, then one probability column per class).",
                           "type": "string", "format": "uri"},
            "result_url_expires_in": {"type": "integer"},
        },
    },
})
# What a client does next with the batch it queued (and how schemathesis'
# stateful phase reaches a batch that exists).
_BATCH_LINKS = {
    name: {"operationId": operation_id, "parameters": {"batch_id": "$response.body#/batch_id"},
           "description": description}
    for name, operation_id, description in [
        ("GetBatch", "getBatch", "Poll until Done or Failed."),
        ("DeleteBatch", "deleteBatch", "Remove the batch and its results."),
    ]
}
_BATCH_ID_PARAMETER = {"name": "batch_id", "in": "path", "required": True,
                       "schema": {"type": "string"}}
_PATHS.update({
    "/models/{model_id}/batches": {
        "parameters": [_MODEL_ID_PARAMETER],
        "post": {
            "operationId": "createBatch",
            "summary": "Predict a CSV of any size in the background; the results go to S3.",
            "requestBody": {
                "required": True,
                "description": "Feature rows as CSV (no header, no label; checked at once), "
                               "or the id of a file sent to the form of POST /uploads as "
                               "JSON (checked as it is read: a bad row fails the batch).",
                "content": {"text/csv": {"schema": _CSV_TEXT, "example": "6.9,3.1,5.1,2.3\n"},
                            "application/json": {"schema": _schema("UploadReference")}},
            },
            "responses": {
                "202": {**_json("Queued; poll GET /batches/{batch_id}.", _schema("BatchQueued")),
                        "links": _BATCH_LINKS},
                "400": _text("The upload_id was not handed out by POST /uploads, or nothing "
                             "was sent to its form."),
                "404": _response("NotFound"),
                "409": {"description": "The model is still training, or training failed.",
                        "content": {"application/json": {"schema": {"type": "object"}},
                                    "text/plain": {"schema": {"type": "string"}}}},
                "413": _response("TooLarge"),
                "415": _text("The body is neither CSV nor {\"upload_id\"}, or (on a second "
                             "line) what is wrong with the CSV's rows."),
                **_EVERY_ROUTE,
            },
        },
    },
    "/batches/{batch_id}": {
        "parameters": [_BATCH_ID_PARAMETER],
        "get": {
            "operationId": "getBatch",
            "summary": "The batch's status and progress, and its results' link when Done.",
            "responses": {
                "200": _json("The batch.", _schema("BatchStatus")),
                "404": _text("No such batch (or it was deleted, with its model or alone)."),
                **_EVERY_ROUTE,
            },
        },
        "delete": {
            "operationId": "deleteBatch",
            "summary": "Remove the batch, its input (when it was posted here) and its results.",
            "responses": {
                "204": {"description": "Deleted."},
                "404": _text("No such batch."),
                **_EVERY_ROUTE,
            },
        },
    },
})

_DOCUMENT: dict[str, Any] = {
    "openapi": OPENAPI_VERSION,
    "info": {
        "title": "ml-api",
        "version": "1",
        "description": "Train logistic-regression models from CSV and serve their "
                       "predictions. Errors are plain text in the original service's words.",
    },
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                       "description": "Needed wherever the service requires API keys: every "
                                      "deployed stage, unless it opted out; local runs "
                                      "only with REQUIRE_API_KEY=true."},
        },
    },
    # Optional: {} lets requests without a key through where keys are off.
    "security": [{}, {"ApiKey": []}],
}


def document() -> dict[str, Any]:
    """The OpenAPI document, a fresh copy each call."""
    return copy.deepcopy(_DOCUMENT)


def response() -> Response:
    """GET /openapi.json's answer."""
    return Response(body=document(), status_code=200,
                    headers={"Content-Type": "application/json"})
