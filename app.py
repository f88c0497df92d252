"""ml-api: train logistic-regression models from CSV and serve predictions.

Routes keep the seed service's paths, status codes and texts; the work is in
chalicelib.
"""
from chalice import Chalice, Rate

from chalicelib import api, batch_api, components, dashboard, openapi
from chalicelib.batches import BatchMessage
from chalicelib.config import (API_GATEWAY_AUTHORIZER, BATCH_MAX_CONCURRENCY, BATCH_QUEUE_NAME,
                               SWEEP_RATE_MINUTES, TRAINER_MAX_CONCURRENCY, TRAINING_QUEUE_NAME)
from chalicelib.queue import TrainingMessage

app = Chalice(app_name="ml-api")


def _content_type() -> str | None:
    return app.current_request.headers.get("content-type")


def _body() -> bytes:
    return app.current_request.raw_body or b""


# In a deployed stage with API_GATEWAY_AUTHORIZER=true (prod), API Gateway
# checks X-Api-Key with this authorizer before a route's Lambda runs. The
# middleware runs the same check inside the app, with the service's own texts,
# wherever REQUIRE_API_KEY is on: locally, in tests, and behind API Gateway.
@app.authorizer(header="X-Api-Key", ttl_seconds=300)
def api_key_authorizer(auth_request):
    return api.authorize(auth_request.token)


@app.middleware("http")
def require_api_key(event, get_response):
    return api.check_api_key(event.path, event.headers) or get_response(event)


# Read when Chalice imports the app to deploy it, with the stage's variables set.
_AUTH = {"authorizer": api_key_authorizer} if API_GATEWAY_AUTHORIZER else {}


@app.route("/models", methods=["POST"], content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def create_model():
    return api.create_model(_content_type(), _body(), app.current_request.query_params)


@app.route("/uploads", methods=["POST"], content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def new_upload():
    return api.new_upload()


@app.route("/models", methods=["GET"], content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def list_models():
    return api.list_models(app.current_request.query_params)


# GET as in the seed; POST too, because many HTTP tools cannot send a GET body.
@app.route("/models/{model_id}", methods=["GET", "POST"], content_types=api.ANY_CONTENT_TYPE,
           **_AUTH)
def predict(model_id):
    return api.predict(model_id, _content_type(), _body())


@app.route("/models/{model_id}", methods=["DELETE"], content_types=api.ANY_CONTENT_TYPE,
           **_AUTH)
def delete_model(model_id):
    return api.delete_model(model_id)


@app.route("/models/{model_id}/artifact", methods=["GET"], content_types=api.ANY_CONTENT_TYPE,
           **_AUTH)
def model_artifact(model_id):
    return api.artifact(model_id)


@app.route("/check_model_status/{model_id}", methods=["GET", "POST"],
           content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def check_model_status(model_id):
    return api.model_status(model_id)


@app.route("/models/{model_id}/batches", methods=["POST"], content_types=api.ANY_CONTENT_TYPE,
           **_AUTH)
def submit_batch(model_id):
    return batch_api.submit(model_id, _content_type(), _body())


@app.route("/batches/{batch_id}", methods=["GET"], content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def batch_status(batch_id):
    return batch_api.status(batch_id)


@app.route("/batches/{batch_id}", methods=["DELETE"], content_types=api.ANY_CONTENT_TYPE,
           **_AUTH)
def delete_batch(batch_id):
    return batch_api.delete(batch_id)


# The dashboard page asks for the API key itself, so it carries no authorizer.
@app.route("/", methods=["GET"], content_types=api.ANY_CONTENT_TYPE)
def dashboard_root():
    return dashboard.response()


@app.route("/dashboard", methods=["GET"], content_types=api.ANY_CONTENT_TYPE)
def dashboard_page():
    return dashboard.response()


@app.route("/openapi.json", methods=["GET"], content_types=api.ANY_CONTENT_TYPE, **_AUTH)
def openapi_document():
    return openapi.response()


@app.on_sqs_message(queue=TRAINING_QUEUE_NAME, batch_size=1,
                    maximum_concurrency=TRAINER_MAX_CONCURRENCY)
def train_model(event):
    for record in event:
        receive_count = int(record.to_dict().get("attributes", {}).get("ApproximateReceiveCount", "1"))
        components.trainer().handle(TrainingMessage.from_json(record.body), receive_count)


@app.on_sqs_message(queue=BATCH_QUEUE_NAME, batch_size=1,
                    maximum_concurrency=BATCH_MAX_CONCURRENCY)
def run_batch(event):
    def remaining_seconds() -> float:
        return event.context.get_remaining_time_in_millis() / 1000
    for record in event:
        receive_count = int(record.to_dict().get("attributes", {}).get("ApproximateReceiveCount", "1"))
        components.batch_runner().handle(BatchMessage.from_json(record.body), receive_count,
                                         remaining_seconds)


# Expired models are hidden at once; this removes their datasets, artifacts and
# items (DynamoDB's TTL would remove only the item, and only within days).
@app.schedule(Rate(SWEEP_RATE_MINUTES, unit=Rate.MINUTES))
def sweep_expired(event):
    components.sweeper().sweep()
