"""The numpy-only serving path: same answers as scikit-learn, cached, lean."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from chalice.test import Client

from chalicelib import api, components, csvdata
from chalicelib.csvdata import CsvError, parse_features
from chalicelib.serving import Predictor, ServingModel
from chalicelib.storage import SERVING_ARTIFACT
from chalicelib.training import fit_pipeline
from tests.conftest import IRIS, TEST_SIGNING_KEY


def _datasets():
    from sklearn import datasets

    iris = datasets.load_iris()
    yield "iris, string labels", iris.data, iris.target_names[iris.target]
    cancer = datasets.load_breast_cancer()
    yield "breast cancer, binary", cancer.data, cancer.target
    wine = datasets.load_wine()
    yield "wine, 3 classes", wine.data, wine.target
    digits = datasets.load_digits()
    yield "digits, 10 classes, constant columns", digits.data, digits.target
    x, y = datasets.make_classification(n_samples=300, n_features=6, n_informative=4,
                                        n_classes=2, random_state=3)
    yield "synthetic binary, whole float labels", x * 1000, y + 1.0


@pytest.mark.parametrize("name, x, y", list(_datasets()), ids=lambda v: v if isinstance(v, str) else "")
def test_numpy_predictions_equal_the_pipeline(name, x, y):
    data = csvdata.TrainingData.from_labels(x.astype(np.float64), y.tolist())
    pipeline = fit_pipeline(data)
    model = ServingModel.from_bytes(ServingModel.from_pipeline(pipeline).to_bytes())
    rng = np.random.default_rng(0)
    rows = np.vstack([x, x[rng.integers(0, len(x), 50)] + rng.normal(0, 0.5, (50, x.shape[1]))])
    ours = model.predict(rows)
    np.testing.assert_allclose(ours["prediction_probability"], pipeline.predict_proba(rows),
                               rtol=0, atol=1e-12)
    assert ours["predictions"] == pipeline.predict(rows).tolist()
    for i in range(0, len(rows), len(rows) // 7):  # a row alone, as inside a batch
        alone = model.predict(rows[i:i + 1])
        assert alone["predictions"][0] == ours["predictions"][i]
        np.testing.assert_allclose(alone["prediction_probability"][0],
                                   ours["prediction_probability"][i], rtol=0, atol=1e-12)


def test_serving_artifact_loads_without_pickle():
    data = csvdata.parse_training(IRIS)
    blob = ServingModel.from_pipeline(fit_pipeline(data)).to_bytes()
    model = ServingModel.from_bytes(blob)  # np.load(..., allow_pickle=False) inside
    assert model.classes.dtype.kind == "U" and model.n_features == 4
    assert len(blob) < 2048


def test_predict_path_imports_neither_sklearn_nor_pandas(tmp_path):
    data = csvdata.parse_training(IRIS)
    (tmp_path / "serving.npz").write_bytes(ServingModel.from_pipeline(fit_pipeline(data)).to_bytes())
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from moto import mock_aws
        import boto3
        with mock_aws():
            from devstack import bootstrap, stage
            stage.apply("dev")
            from chalicelib import components
            from chalicelib.config import Settings
            from chalicelib.registry import ModelRecord, Status, now_iso
            from chalicelib.storage import SERVING_ARTIFACT
            bootstrap.bootstrap(boto3.session.Session(), Settings.from_env())
            components.registry().create(ModelRecord(
                model_id="m1", task_id="t", status=Status.READY, created_at=now_iso(),
                n_rows=150, n_features=4, dataset_key="k"))
            components.store().put_artifact(
                "m1", SERVING_ARTIFACT, Path({str(tmp_path / "serving.npz")!r}).read_bytes())
            from chalice.test import Client
            from app import app
            with Client(app) as client:
                answer = client.http.get("/models/m1", headers={{"Content-Type": "text/csv"}},
                                         body=b"6.9,3.1,5.1,2.3")
            assert answer.status_code == 202, answer.body
            print(answer.json_body["predictions"], sorted(
                m for m in sys.modules if m.split(".")[0] in ("sklearn", "pandas", "scipy")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=str(components.__file__).rsplit("/chalicelib", 1)[0],
                            env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "test",
                                 "MODEL_SIGNING_KEY": TEST_SIGNING_KEY,
                                 "AWS_SECRET_ACCESS_KEY": "test"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['virginica'] []"


@pytest.fixture
def ready_model(aws):
    submission = components.service().submit(IRIS)
    from tests.test_service import _train_queued
    assert _train_queued(aws) == ["ready"]
    return submission.model_id


def _count_aws_calls(calls):
    def count(event_name, **kwargs):
        calls.append(event_name)
    for client in (components.store()._s3, components.registry()._client):
        client.meta.events.register("before-call", count)


def test_warm_predict_makes_no_aws_call(ready_model):
    calls = []
    _count_aws_calls(calls)
    components.service().predict(ready_model, b"6.9,3.1,5.1,2.3")
    assert len(calls) == 1  # the status read, which carries the serving arrays
    for _ in range(5):
        assert components.service().predict(ready_model, b"6.9,3.1,5.1,2.3")["predictions"] == ["virginica"]
    assert len(calls) == 1


def test_warm_container_learns_of_a_deletion_after_the_recheck_interval(aws, ready_model):
    now = [0.0]
    service = components.service()
    service._predictor = Predictor(components.store(), cache_size=4, recheck_seconds=60,
                                   clock=lambda: now[0])
    service.predict(ready_model, b"1,2,3,4")
    components.registry().delete(ready_model)
    now[0] = 59
    service.predict(ready_model, b"1,2,3,4")  # still trusted
    now[0] = 61
    from chalicelib.service import ModelNotFound
    with pytest.raises(ModelNotFound):
        service.predict(ready_model, b"1,2,3,4")


def test_cache_is_bounded_least_recently_used_first_out(aws):
    data = csvdata.parse_training(IRIS)
    blob = ServingModel.from_pipeline(fit_pipeline(data)).to_bytes()
    store = components.store()
    for model_id in ("a", "b", "c"):
        store.put_artifact(model_id, SERVING_ARTIFACT, blob)
    predictor = Predictor(store, cache_size=2, recheck_seconds=60)
    predictor.load("a"), predictor.load("b")
    predictor.fresh("a")  # a is now the most recently used
    predictor.load("c")
    assert predictor.fresh("a") is not None and predictor.fresh("c") is not None
    assert predictor.fresh("b") is None


def test_answers_over_lambdas_limit_are_413_naming_the_rows_that_fit(aws, ready_model, monkeypatch):
    monkeypatch.setattr(api, "RESPONSE_LIMIT_BYTES", 20_000)
    from app import app
    rows = b"".join(b"6.9,3.1,5.1,2.3\n" for _ in range(1000))
    with Client(app) as client:
        response = client.http.get(f"/models/{ready_model}", headers={"Content-Type": "text/csv"},
                                   body=rows)
        assert response.status_code == 413
        text = response.body.decode()
        assert text.startswith("The answer for 1000 rows would be ")
        fitting = int(text.rsplit("send at most ", 1)[1].split()[0])
        assert 50 < fitting < 1000
        ok = client.http.get(f"/models/{ready_model}", headers={"Content-Type": "text/csv"},
                             body=rows[: 16 * fitting])
        assert ok.status_code == 202


def _random_rows(rng, n, width):
    return "".join(",".join(f"{v:.6g}" for v in row) + "\n"
                   for row in rng.normal(0, 100, (n, width))).encode()


def test_fast_parser_agrees_with_the_precise_one():
    rng = np.random.default_rng(7)
    body = _random_rows(rng, 2000, 4)
    assert len(body) > csvdata._FAST_PARSE_BYTES
    np.testing.assert_array_equal(csvdata._fast_features(body, 4),
                                  csvdata._precise_features(body, 4))


@pytest.mark.parametrize("tail, reason", [
    (b"1,2,3\n", "row 2001 has 3 values, but the model expects 4 features"),
    (b"1,2,nan,4\n", "row 2001, column 3: 'nan' is not a finite number"),
    (b"1,2,x,4\n", "row 2001, column 3: 'x' is not a number"),
    (b"1,2,,4\n", "row 2001, column 3: the value is missing"),
])
def test_large_bodies_with_a_bad_row_get_the_precise_reason(tail, reason):
    body = _random_rows(np.random.default_rng(1), 2000, 4) + tail
    with pytest.raises(CsvError) as error:
        parse_features(body, 4)
    assert str(error.value).startswith(reason)


def test_large_bodies_with_crlf_blank_lines_and_quotes_still_parse():
    body = _random_rows(np.random.default_rng(2), 500, 2)
    expected = parse_features(body, 2)
    variant = b'\r\n\r\n'.join(body.split(b"\n")).replace(b"\r\n", b'\r\n', 1)
    np.testing.assert_array_equal(parse_features(variant, 2), expected)
    quoted = b"\n".join(b'"' + line.replace(b",", b'","') + b'"' if line else line
                        for line in body.split(b"\n"))
    np.testing.assert_array_equal(parse_features(quoted, 2), expected)
