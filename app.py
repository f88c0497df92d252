"""ml-api: train logistic-regression models from CSV and serve predictions.

Routes keep the seed service's paths, status codes and texts; the work is in
chalicelib.
"""
from chalice import Chalice

from chalicelib import api, components
from chalicelib.config import TRAINER_MAX_CONCURRENCY, TRAINING_QUEUE_NAME
from chalicelib.queue import TrainingMessage

app = Chalice(app_name="ml-api")


def _content_type() -> str | None:
    return app.current_request.headers.get("content-type")


def _body() -> bytes:
    return app.current_request.raw_body or b""


@app.middleware("http")
def require_api_key(event, get_response):
    return api.check_api_key(event.headers) or get_response(event)


@app.route("/models", methods=["POST"], content_types=api.ANY_CONTENT_TYPE)
def create_model():
    return api.create_model(_content_type(), _body())


# GET as in the seed; POST too, because many HTTP tools cannot send a GET body.
@app.route("/models/{model_id}", methods=["GET", "POST"], content_types=api.ANY_CONTENT_TYPE)
def predict(model_id):
    return api.predict(model_id, _content_type(), _body())


@app.route("/check_model_status/{model_id}", methods=["GET", "POST"],
           content_types=api.ANY_CONTENT_TYPE)
def check_model_status(model_id):
    return api.model_status(model_id)


@app.on_sqs_message(queue=TRAINING_QUEUE_NAME, batch_size=1,
                    maximum_concurrency=TRAINER_MAX_CONCURRENCY)
def train_model(event):
    for record in event:
        receive_count = int(record.to_dict().get("attributes", {}).get("ApproximateReceiveCount", "1"))
        components.trainer().handle(TrainingMessage.from_json(record.body), receive_count)
