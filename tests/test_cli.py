"""The `ml-api` command-line client (mlapi_cli/) against the local stack,
started the way `make run` starts it on free ports (tests/stack.py), run as a
subprocess. The stack starts once for the module; every wait is bounded."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.ports import free_ports
from tests.conftest import two_class_lines
from tests.stack import running_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
IRIS = REPO / "iris.csv"
IRIS_ROWS = [line.split(",") for line in IRIS.read_text().splitlines() if line.strip()]
CLI_TIMEOUT = 120
CLI = [sys.executable, "-m", "mlapi_cli.main"]


# Uploads over this many bytes are refused (the stack's MAX_UPLOAD_BYTES).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The local stack; stopped with SIGINT (Ctrl-C) afterwards."""
    with running_stack(tmp_path_factory.mktemp("devstack-cli"),
                       env={"MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(stack):
    return stack.api


def run_cli(api: str | None, *args: str, timeout: float = CLI_TIMEOUT):
    env = os.environ.copy()
    env.pop("ML_API_KEY", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["COLUMNS"] = "200"
    if api is None:
        env.pop("ML_API_URL", None)
    else:
        env["ML_API_URL"] = api
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def model(api) -> str:
    result = run_cli(api, "train", str(IRIS), "--wait")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    model_id = result.stdout.splitlines()[0].strip()
    assert model_id.startswith("model_")
    for word in ("accuracy", "log_loss", "macro_f1", "precision", "recall", "f1",
                 "setosa", "versicolor", "virginica"):
        assert word in result.stdout, result.stdout
    return model_id


def test_help_lists_the_commands():
    result = run_cli(None, "--help")
    assert result.returncode == 0
    for command in ("train", "predict", "status", "list", "delete", "download"):
        assert command in result.stdout


def test_usage_errors_exit_2():
    assert run_cli(None, "train").returncode == 2
    assert run_cli(None, "frobnicate").returncode == 2


def test_status_json_and_list(api, model):
    result = run_cli(api, "--json", "status", model)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["status"] == "Ready to Use"
    assert status["model_id"] == model
    assert status["classes"] == ["setosa", "versicolor", "virginica"]
    assert "accuracy" in status["metrics"]

    listed = run_cli(api, "list", "--status", "ready", "--all")
    assert listed.returncode == 0, listed.stderr
    assert model in listed.stdout
    as_json = json.loads(run_cli(api, "--json", "list", "--all").stdout)
    assert model in [m["model_id"] for m in as_json["models"]]
    assert as_json["next"] is None


def test_predict_writes_one_line_per_row(api, model, tmp_path):
    features = tmp_path / "rows.csv"
    features.write_text("".join(",".join(row[:-1]) + "\n" for row in IRIS_ROWS))
    output = tmp_path / "out.csv"
    result = run_cli(api, "predict", model, str(features), "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = output.read_text().splitlines()
    assert lines[0] == "label,p_setosa,p_versicolor,p_virginica"
    assert len(lines) == len(IRIS_ROWS) + 1
    labels = [line.split(",")[0] for line in lines[1:]]
    truth = [row[-1] for row in IRIS_ROWS]
    assert sum(a == b for a, b in zip(labels, truth)) >= 0.9 * len(truth)
    for line in lines[1:]:
        assert abs(sum(float(p) for p in line.split(",")[1:]) - 1) < 1e-6
    # stdout too, and the same labels
    to_stdout = run_cli(api, "predict", model, str(features))
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.splitlines() == lines


def test_predict_with_bad_rows_exits_4_with_one_line(api, model, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("6.9,3.1,5.1,2.3\n1,2\n")
    result = run_cli(api, "predict", model, str(bad))
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: 415 Please post data in csv format.")
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_download_unpickles_and_predicts(api, model, tmp_path):
    target = tmp_path / "model.pkl"
    result = run_cli(api, "download", model, str(target))
    assert result.returncode == 0, result.stderr
    pipeline = pickle.loads(target.read_bytes())
    assert list(pipeline.predict([[6.9, 3.1, 5.1, 2.3], [5.1, 3.5, 1.4, 0.2]])) \
        == ["virginica", "setosa"]


def test_a_closed_port_exits_5():
    port, = free_ports(1)
    result = run_cli(None, "--url", f"http://127.0.0.1:{port}", "status", "x")
    assert result.returncode == 5
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_rejected_training_exits_4(api, tmp_path):
    single = tmp_path / "one-class.csv"
    single.write_text("1,2,a\n3,4,a\n")
    result = run_cli(api, "train", str(single))
    assert result.returncode == 4
    assert result.stderr.startswith("error: 415 ")
    assert run_cli(api, "train", str(IRIS), "--C", "0").returncode == 4


def test_unknown_model_exits_3(api):
    result = run_cli(api, "status", "model_20000101-000000_000000000000")
    assert result.returncode == 3
    assert "doesn't exist" in result.stderr


def test_a_file_too_large_for_one_request_goes_through_the_upload_form(stack, tmp_path):
    """6.5 MB: under API Gateway's 10 MB, over what Lambda's 6 MB request holds,
    so the CLI sends it to the presigned S3 form, not to POST /models."""
    big = tmp_path / "big.csv"
    lines = two_class_lines(int(6.5 * 1024 * 1024), seed=7)
    big.write_text("".join(lines))
    result = run_cli(stack.api, "train", str(big), "--wait", "--max-iter", "200")
    assert result.returncode == 0, (result.stdout, result.stderr)
    model_id = result.stdout.splitlines()[0].strip()
    status = json.loads(run_cli(stack.api, "--json", "status", model_id).stdout)
    assert status["n_rows"] == len(lines)
    assert status["metrics"]["accuracy"] > 0.9
    uploads = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/")["Contents"]
    [upload] = [o for o in uploads if o["Size"] == big.stat().st_size]
    tags = stack.s3.get_object_tagging(Bucket=stack.bucket, Key=upload["Key"])["TagSet"]
    assert tags == [{"Key": "ml-api-upload", "Value": "claimed"}]
    assert run_cli(stack.api, "delete", model_id).returncode == 0


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(stack, tmp_path):
    big = tmp_path / "huge.csv"
    big.write_text("".join(two_class_lines(MAX_UPLOAD_BYTES + 1, seed=8)))
    before = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/").get("KeyCount", 0)
    result = run_cli(stack.api, "train", str(big))
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert result.stderr.strip() == (f"error: {big} is {big.stat().st_size:,} bytes; the service "
                                     f"takes uploads of at most {MAX_UPLOAD_BYTES:,} bytes")
    assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/").get(
        "KeyCount", 0) == before


def test_the_emulator_refuses_a_file_over_the_forms_limit(stack):
    """The form POST /uploads hands out, sent a file one byte over its limit
    (the CLI would not send it): refused by the emulator as S3 would."""
    form = stack.http.post(f"{stack.api}/uploads").json()
    assert form["max_bytes"] == MAX_UPLOAD_BYTES
    for size, expected in ((MAX_UPLOAD_BYTES + 1, 400), (MAX_UPLOAD_BYTES, 204)):
        sent = stack.http.post(form["url"], data=form["fields"],
                               files={"file": ("x.csv", b"1" * size, "text/csv")}, timeout=60)
        assert sent.status_code == expected, sent.text[:300]
        if expected == 400:
            assert "<Code>EntityTooLarge</Code>" in sent.text
            with pytest.raises(stack.s3.exceptions.NoSuchKey):  # nothing stored
                stack.s3.get_object(Bucket=stack.bucket, Key=form["fields"]["key"])
    assert stack.s3.head_object(Bucket=stack.bucket,
                                Key=form["fields"]["key"])["ContentLength"] == MAX_UPLOAD_BYTES


def test_batches_count_rows_as_the_lambda_event_does():
    from mlapi_cli.main import PREDICT_BODY_BUDGET, _batches, event_bytes

    assert event_bytes(b'1,"a"\x01\xc3\xa9') == 1 + 1 + 2 + 1 + 2 + 6 + 6
    rows = [b"\x01" * 1000] * 2000  # 1 MB of rows, 12 MB in the event
    spans = list(_batches(rows))
    assert [end - start for start, end in spans] == [873, 873, 254]
    assert all(sum(event_bytes(row) + 2 for row in rows[a:b]) <= PREDICT_BODY_BUDGET
               for a, b in spans)


def test_delete_then_status_exits_3(api, model):
    # runs last in this module: the shared model is gone afterwards
    result = run_cli(api, "delete", model)
    assert result.returncode == 0, result.stderr
    assert run_cli(api, "status", model).returncode == 3
    assert run_cli(api, "delete", model).returncode == 3
