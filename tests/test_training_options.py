"""Training options (query parameters on POST /models) and the metrics a ready model reports."""
import pickle

import numpy as np
import pytest
from chalice.test import Client

from app import app
from chalicelib import components
from chalicelib.storage import PIPELINE_ARTIFACT
from tests.conftest import IRIS, queue_messages
from tests.test_service import _train_queued

CSV = {"Content-Type": "text/csv"}
HEADER = b"sepal_length,sepal_width,petal_length,petal_width,species\n"


@pytest.fixture
def client(aws):
    with Client(app) as client:
        yield client


def _train(client, aws, query="", body=IRIS):
    answer = client.http.post(f"/models{query}", headers=CSV, body=body)
    assert answer.status_code == 201, answer.body
    assert _train_queued(aws) == ["ready"]
    model_id = answer.json_body["model_id"]
    return model_id, client.http.post(f"/check_model_status/{model_id}").json_body


def _pipeline(model_id):
    return pickle.loads(components.store().get_artifact(model_id, PIPELINE_ARTIFACT))


def test_default_metrics_come_from_a_stratified_20_percent_holdout(client, aws):
    model_id, status = _train(client, aws)
    metrics = status["metrics"]
    assert (metrics["evaluated_on"], metrics["holdout_rows"]) == ("holdout", 30)
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.sum() == 30 and list(matrix.sum(axis=1)) == [10, 10, 10]  # stratified
    assert metrics["confusion_matrix"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert np.trace(matrix) / 30 == pytest.approx(metrics["accuracy"])
    assert [c["class"] for c in metrics["per_class"]] == ["setosa", "versicolor", "virginica"]
    assert all(c["support"] == 10 for c in metrics["per_class"])
    assert metrics["macro_f1"] == pytest.approx(np.mean([c["f1"] for c in metrics["per_class"]]))
    assert 0 < metrics["log_loss"] < 1 and metrics["converged"] is True
    assert metrics["iterations"] > 0 and metrics["training_seconds"] > 0
    # The final model is refitted on every row.
    assert _pipeline(model_id)[0].n_samples_seen_ == 150
    assert status["options"] == {"C": 1.0, "class_weight": None, "fit_intercept": True,
                                 "header": False, "holdout": None, "max_iter": 1000}


def test_small_classes_get_training_set_metrics_labelled_as_such(client, aws):
    body = b"".join(b"%d,%d\n" % (i, i >= 4) for i in range(8))  # 4 rows a class
    _, status = _train(client, aws, body=body)
    assert status["metrics"]["evaluated_on"] == "training set"
    assert "holdout_rows" not in status["metrics"]
    assert np.array(status["metrics"]["confusion_matrix"]["matrix"]).sum() == 8


def test_explicit_holdout_and_holdout_zero(client, aws):
    _, half = _train(client, aws, "?holdout=0.5")
    assert (half["metrics"]["evaluated_on"], half["metrics"]["holdout_rows"]) == ("holdout", 75)
    _, none = _train(client, aws, "?holdout=0")
    assert none["metrics"]["evaluated_on"] == "training set"


def test_a_holdout_the_data_cannot_give_says_why(client, aws):
    body = b"1,a\n2,a\n3,a\n4,b\n"  # class b has 1 row: no stratified split
    _, status = _train(client, aws, "?holdout=0.5", body=body)
    assert status["metrics"]["evaluated_on"] == "training set"
    assert "the smallest class has 1 rows" in status["metrics"]["holdout_skipped"]


def test_model_options_reach_scikit_learn(client, aws):
    default_id, _ = _train(client, aws)
    tight_id, tight = _train(client, aws, "?C=0.01&class_weight=balanced&fit_intercept=false")
    default, strong = _pipeline(default_id)[-1], _pipeline(tight_id)[-1]
    assert (strong.C, strong.class_weight, strong.fit_intercept) == (0.01, "balanced", False)
    assert np.abs(strong.coef_).sum() < np.abs(default.coef_).sum()
    assert not strong.intercept_.any()
    assert tight["options"]["C"] == 0.01
    # The numpy serving path follows the options too.
    answer = client.http.get(f"/models/{tight_id}", headers=CSV, body=b"6.9,3.1,5.1,2.3")
    np.testing.assert_allclose(answer.json_body["prediction_probability"],
                               _pipeline(tight_id).predict_proba([[6.9, 3.1, 5.1, 2.3]]),
                               rtol=0, atol=1e-12)


def test_a_solver_that_stops_early_reports_not_converged(client, aws):
    _, status = _train(client, aws, "?max_iter=1")
    assert status["metrics"]["converged"] is False
    assert status["metrics"]["iterations"] == 1


def test_header_row_names_the_features(client, aws):
    model_id, status = _train(client, aws, "?header=true", body=HEADER + IRIS)
    assert status["feature_names"] == ["sepal_length", "sepal_width", "petal_length",
                                       "petal_width"]
    assert status["n_rows"] == 150
    answer = client.http.get(f"/models/{model_id}", headers=CSV, body=b"6.9,3.1,5.1,2.3")
    assert answer.json_body["predictions"] == ["virginica"]
    listed = client.http.get("/models").json_body["models"]
    assert listed[0]["feature_names"] == status["feature_names"]


@pytest.mark.parametrize("body, reason", [
    (b"a,a,label\n1,2,x\n3,4,y\n", "row 1, column 2: the header names 'a' twice"),
    (b"a,,label\n1,2,x\n3,4,y\n", "row 1, column 2: the header names no feature"),
    (b"a,b,label\n", "the body has a header row but no data rows"),
])
def test_bad_headers_are_415_with_the_reason(client, aws, body, reason):
    answer = client.http.post("/models?header=true", headers=CSV, body=body)
    assert answer.status_code == 415
    assert answer.body.decode().split("\n")[1] == reason
    assert queue_messages(aws, components.settings().queue) == []


def test_a_header_sent_without_header_true_gets_a_hint(client):
    answer = client.http.post("/models", headers=CSV, body=HEADER + IRIS)
    assert answer.body.decode().split("\n")[1] == (
        "row 1, column 1: 'sepal_length' is not a number (a header row? send ?header=true)")


@pytest.mark.parametrize("query, message", [
    ("?C=0", "C must be a number from 1e-06 to 1e+06, not '0'"),
    ("?C=big", "C must be a number from 1e-06 to 1e+06, not 'big'"),
    ("?max_iter=0", "max_iter must be a whole number from 1 to 100000, not '0'"),
    ("?max_iter=2.5", "max_iter must be a whole number from 1 to 100000, not '2.5'"),
    ("?class_weight=auto", "class_weight must be balanced, not 'auto'"),
    ("?fit_intercept=yes", "fit_intercept must be true or false, not 'yes'"),
    ("?holdout=0.9", "holdout must be a number from 0 to 0.5, not '0.9'"),
    ("?header=1", "header must be true or false, not '1'"),
])
def test_bad_training_options_are_400_naming_the_parameter(client, aws, query, message):
    answer = client.http.post(f"/models{query}", headers=CSV, body=IRIS)
    assert (answer.status_code, answer.body.decode()) == (400, message)
    assert queue_messages(aws, components.settings().queue) == []


def test_json_records_by_feature_name(client, aws):
    model_id, _ = _train(client, aws, "?header=true", body=HEADER + IRIS)
    json_headers = {"Content-Type": "application/json"}
    records = (b'{"records": [{"petal_width": 2.3, "sepal_length": 6.9, "sepal_width": 3.1, '
               b'"petal_length": 5.1}]}')
    by_name = client.http.post(f"/models/{model_id}", headers=json_headers, body=records)
    as_csv = client.http.post(f"/models/{model_id}", headers=CSV, body=b"6.9,3.1,5.1,2.3")
    assert by_name.status_code == 202 and by_name.json_body == as_csv.json_body
    wrong = client.http.post(f"/models/{model_id}", headers=json_headers,
                             body=b'{"records": [{"sepal_length": 1, "sepal_width": 2, '
                                  b'"petal_length": 3, "petal_wdith": 4}]}')
    assert wrong.status_code == 415
    assert wrong.body.decode().split("\n")[1] == (
        "record 1 lacks petal_width and has unknown names petal_wdith (the model's features: "
        "sepal_length, sepal_width, petal_length, petal_width)")
