"""The `ml-api` command-line client (mlapi_cli/) against the local stack,
started the way `make run` starts it on free ports (tests/stack.py), run as a
subprocess. The stack starts once for the module; every wait is bounded."""
from __future__ import annotations

import csv
import fcntl
import hashlib
import http.server
import io
import json
import os
import pickle
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from chalicelib.storage import PIPELINE_ARTIFACT, artifact_key
from devstack.ports import free_ports
from tests.conftest import (HOSTILE_LABELS, SPREADSHEET_CELLS, VISIBLE_TEXT,
                            hostile_rows, hostile_training_csv, two_class_lines)
from tests.reliability import record
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
                       env={"MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack):
    """The local stack's API URL."""
    return stack.api


def _cli_environment(api: str | None, columns: int) -> dict[str, str]:
    env = os.environ.copy()
    env.pop("ML_API_KEY", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["COLUMNS"] = str(columns)
    if api is None:
        env.pop("ML_API_URL", None)
    else:
        env["ML_API_URL"] = api
    return env


def run_cli(api: str | None, *args: str, timeout: float = CLI_TIMEOUT, columns: int = 200):
    return subprocess.run([*CLI, *args], cwd=REPO, env=_cli_environment(api, columns),
                          capture_output=True, text=True, timeout=timeout)


def run_cli_on_a_terminal(api: str | None, *args: str, columns: int = 80, term: str = "dumb",
                          timeout: float = CLI_TIMEOUT) -> tuple[int, str]:
    """The command as a person runs it: stdout and stderr on a terminal (a
    pseudo-terminal `columns` wide), so click and rich write what they write
    to a screen (click strips ANSI sequences only when writing to a file or
    pipe). With TERM=dumb rich adds no styles of its own (and takes the
    screen as 80 columns wide), and the terminal passes bytes through
    untranslated, so every control character in the output came from the
    data. Returns (exit code, output)."""
    env = _cli_environment(api, columns)
    del env["COLUMNS"]  # rich asks the terminal
    env["TERM"] = term
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    attributes = termios.tcgetattr(terminal)
    attributes[1] &= ~termios.OPOST  # no "\n" -> "\r\n"
    termios.tcsetattr(terminal, termios.TCSANOW, attributes)
    process = subprocess.Popen([*CLI, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal)
    os.close(terminal)
    output, deadline = bytearray(), time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                process.kill()
                pytest.fail(f"ml-api {' '.join(args)} still running after {timeout} s: "
                            f"{output.decode(errors='replace')}")
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
    return code, output.decode("utf-8", errors="replace")


# Written out here rather than imported from mlapi_cli: C0 but "\n", DEL, C1, and
# the bidirectional controls.
_RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                          "\u2066-\u2069]")


def raw_controls(text: str) -> list[str]:
    """The control characters in `text` (which would act on a terminal)."""
    return sorted(set(_RAW_CONTROL.findall(text)))


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


# --- values from the server: shown as text, saved as data -----------------------------

def _hostile_csv(path: Path) -> Path:
    path.write_text(hostile_training_csv())
    return path


def _hostile_rows(path: Path) -> Path:
    path.write_text(hostile_rows())
    return path


@pytest.fixture(scope="module")
def hostile_model(stack, tmp_path_factory) -> str:
    """A model trained (over HTTP) on HOSTILE_LABELS."""
    body = _hostile_csv(tmp_path_factory.mktemp("hostile") / "train.csv").read_bytes()
    created = stack.http.post(f"{stack.api}/models", data=body,
                              headers={"Content-Type": "text/csv"}, timeout=30)
    assert created.status_code == 201, created.text
    model_id = created.json()["model_id"]
    status = stack.wait_for_training(model_id)
    assert status["status"] == "Ready to Use", status
    assert sorted(status["classes"]) == sorted(HOSTILE_LABELS)
    return model_id


@pytest.mark.parametrize("value, cell", SPREADSHEET_CELLS)
def test_spreadsheet_cells(value, cell):
    from mlapi_cli.output import spreadsheet_cell
    assert spreadsheet_cell(value) == cell


@pytest.mark.parametrize("value, shown", VISIBLE_TEXT)
def test_visible_text(value, shown):
    from mlapi_cli.output import visible
    assert visible(value) == shown


def test_hostile_labels_are_shown_as_text_on_a_terminal(stack, hostile_model, tmp_path):
    """train --wait, status and predict on a terminal: rich markup in a label
    is text (it crashed `status` with a MarkupError), and no label's control
    characters reach the terminal."""
    runs = {
        "train --wait": run_cli_on_a_terminal(
            stack.api, "train", str(_hostile_csv(tmp_path / "train.csv")), "--wait"),
        "status": run_cli_on_a_terminal(stack.api, "status", hostile_model),
        "predict": run_cli_on_a_terminal(stack.api, "predict", hostile_model,
                                         str(_hostile_rows(tmp_path / "rows.csv"))),
    }
    for command, (code, output) in runs.items():
        assert code == 0, (command, output)
        assert raw_controls(output) == [], (command, output)
        assert "MarkupError" not in output and "[/x]" in output, (command, output)
        assert "\\x1b]0;pwned\\x07\\x1b[2Jred" in output, (command, output)
        assert "\\x9b31mc1" in output and "\\u202eevil" in output, (command, output)
    # On a terminal, predict shows the CSV it would write (escaped the same way).
    shown = list(csv.reader(io.StringIO(runs["predict"][1], newline="")))
    assert [row[0] for row in shown[1:]] == [
        "'" + HOSTILE_LABELS[0], "'@SUM(1+1)", "'-2+3", "[/x]", "\\x1b]0;pwned\\x07\\x1b[2Jred",
        "\\x9b31mc1", "\\u202eevil", "-1.5"], shown
    record("Client security", "Labels with markup and control characters",
           "trained a model whose labels are rich markup ([/x]), OSC/CSI escape sequences, a "
           "C1 CSI and a bidi override, then ran train --wait, status and predict on a "
           "pseudo-terminal", len(runs),
           f"exit 0 each; {sum(len(o) for _, o in runs.values())} characters of output, no "
           "raw control character, the labels shown as text with \\x1b-style escapes")


def test_predict_csv_escapes_formulas_and_keeps_numbers(stack, hostile_model, tmp_path):
    output = tmp_path / "out.csv"
    result = run_cli(stack.api, "predict", hostile_model,
                     str(_hostile_rows(tmp_path / "rows.csv")), "--output", str(output))
    assert result.returncode == 0, result.stderr
    header, *rows = list(csv.reader(io.StringIO(output.read_text(), newline="")))
    classes = json.loads(run_cli(stack.api, "--json", "status", hostile_model).stdout)["classes"]
    assert header == ["label", *(f"p_{name}" for name in classes)]
    labels = [row[0] for row in rows]
    # The file is data: the labels as trained, but a spreadsheet never runs one.
    assert labels == ["'" + HOSTILE_LABELS[0], "'@SUM(1+1)", "'-2+3", "[/x]",
                      "\x1b]0;pwned\x07\x1b[2Jred", "\x9b31mc1", "\u202eevil", "-1.5"]
    probabilities = [float(p) for row in rows for p in row[1:]]
    assert len(probabilities) == len(rows) * len(classes)
    record("Client security", "CSV injection in predict's output",
           "predicted one row per label (formulas with = @ -, markup, escapes, the text "
           "label -1.5) with ml-api predict --output and read the file back as CSV",
           len(rows), f"{sum(label.startswith(chr(39)) for label in labels)} formula labels "
           "written with a leading apostrophe, -1.5 and the probabilities as numbers")


HOSTILE = "[/x]\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"
_TEXT = "text/plain; charset=utf-8"


class _HostileServer(http.server.BaseHTTPRequestHandler):
    """A server (or anything between the client and the service) answering
    every route with values meant for a terminal."""

    def _answer(self, status: int, body, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/models?") or self.path == "/models":
            self._answer(200, {"models": [{"model_id": "model_" + HOSTILE, "status": HOSTILE,
                                           "created_at": HOSTILE, "n_rows": HOSTILE,
                                           "n_features": 1, "metrics": {"accuracy": HOSTILE}}],
                               "next": None})
        elif self.path.startswith("/check_model_status/"):
            self._answer(200, {"status": "Ready to Use", "model_id": HOSTILE, HOSTILE: HOSTILE,
                               "classes": [HOSTILE],
                               "metrics": {"evaluated_on": HOSTILE, "accuracy": 0.5,
                                           "per_class": [{"class": HOSTILE, "precision": 1,
                                                          "recall": 1, "f1": 1, "support": 1}]}})
        elif self.path.endswith("/artifact"):
            self._answer(409, {"status": "Training Failed", "error": HOSTILE})
        else:
            self.do_DELETE()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(415, f"Please post data in csv format.\n{HOSTILE}", _TEXT)

    def do_DELETE(self):
        self._answer(404, f"no {HOSTILE}\nsecond line {HOSTILE}", _TEXT)

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), _HostileServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_hostile_server_cannot_write_to_the_terminal(hostile_server, tmp_path):
    """Every value a server sends (ids, statuses, facts, metrics, error texts)
    reaches the terminal as text, in every command."""
    rows = tmp_path / "rows.csv"
    rows.write_text("1\n")
    runs = {
        "list": (0, ("list",)),
        "status": (0, ("status", "m")),
        "predict": (4, ("predict", "m", str(rows))),
        "download": (4, ("download", "m", str(tmp_path / "m.pkl"))),
        "delete": (3, ("delete", "m")),
        "train": (4, ("train", str(rows))),
    }
    seen = {}
    for command, (expected, args) in runs.items():
        code, output = run_cli_on_a_terminal(hostile_server, *args)
        assert code == expected, (command, output)
        assert raw_controls(output) == [], (command, output)
        assert "[/x]\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202e" in output, (command, output)
        seen[command] = code
    assert not (tmp_path / "m.pkl").exists()
    record("Client security", "Hostile server answers",
           "a local server answered list, status, predict, download, delete and train with "
           "ids, statuses, facts, metrics and error texts holding rich markup, OSC/CSI/C1 "
           "escapes and a bidi override; each command ran on a pseudo-terminal", len(runs),
           "exit codes " + ", ".join(f"{command} {code}" for command, code in seen.items())
           + "; every hostile value shown with visible escapes, no raw control character "
           "or markup error on the terminal")


@pytest.mark.parametrize("columns", [80, 60])
def test_list_never_wraps_a_model_id(stack, model, hostile_model, columns):
    """People copy ids from `ml-api list`: each one whole on one line, however
    narrow the terminal (other columns give way)."""
    code, output = run_cli_on_a_terminal(stack.api, "list", "--all", columns=columns,
                                         term="xterm-256color")
    assert code == 0, output
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()  # rich's own styles
    assert max(map(len, lines)) <= columns, output
    for model_id in (model, hostile_model):
        [line] = [line for line in lines if model_id in line]
        assert re.search(rf"(^|\s){model_id}\s+ready(\s|$)", line), output
    if columns >= 80:
        created = json.loads(run_cli(stack.api, "--json", "status", model).stdout)["created_at"]
        assert created in next(line for line in lines if model in line), output


def test_download_checks_the_sha256_before_writing(stack, model, tmp_path):
    """A download whose bytes differ from the SHA-256 in the /artifact answer
    (here: the object replaced in the bucket, its metadata kept) is refused and
    leaves nothing behind: not the bad file, not a temporary one, and an
    existing file at the destination stays as it was."""
    key = artifact_key(model, PIPELINE_ARTIFACT)
    genuine = stack.s3.get_object(Bucket=stack.bucket, Key=key)
    blob, metadata = genuine["Body"].read(), genuine["Metadata"]
    existing, fresh = tmp_path / "model.pkl", tmp_path / "fresh.pkl"
    existing.write_bytes(b"the user's earlier file")
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=pickle.dumps({"not": "the model"}),
                        Metadata=metadata)
    try:
        refusals = [run_cli(stack.api, "download", model, str(path)) for path in (existing, fresh)]
    finally:
        stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=blob, Metadata=metadata)
    for result in refusals:
        assert result.returncode == 5, (result.stdout, result.stderr)
        assert "SHA-256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert existing.read_bytes() == b"the user's earlier file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pkl"]

    answer = run_cli(stack.api, "--json", "download", model, str(existing))
    assert answer.returncode == 0, answer.stderr
    assert existing.read_bytes() == blob
    assert json.loads(answer.stdout)["sha256"] == hashlib.sha256(blob).hexdigest()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pkl"]
    record("Client security", "Tampered download",
           "replaced model.pkl in the bucket (its HMAC metadata kept) and ran ml-api download "
           "onto an existing file and onto a new path, with no signing key on the client",
           len(refusals), f"exit {', '.join(sorted({str(r.returncode) for r in refusals}))} with a SHA-256 "
           "mismatch; the existing file unchanged, nothing else left in the folder; the "
           f"genuine {len(blob):,} bytes then written after their SHA-256 matched")


# --- predict --batch ----------------------------------------------------------------

def test_predict_batch_equals_predict_row_for_row(api, model, tmp_path):
    features = tmp_path / "rows.csv"
    features.write_text("".join(",".join(row[:-1]) + "\n" for row in IRIS_ROWS) * 20)
    batch, sync = tmp_path / "batch.csv", tmp_path / "sync.csv"
    result = run_cli(api, "predict", model, str(features), "--batch", "--output", str(batch))
    assert result.returncode == 0, result.stderr
    assert f"{len(IRIS_ROWS) * 20:,} predictions written to" in result.stderr
    assert run_cli(api, "predict", model, str(features), "--output", str(sync)).returncode == 0
    header, *rows = list(csv.reader(io.StringIO(batch.read_text(), newline="")))
    assert header == ["row", "label", "setosa", "versicolor", "virginica"]
    expected = list(csv.reader(io.StringIO(sync.read_text(), newline="")))[1:]
    assert [row[0] for row in rows] == [str(n) for n in range(1, len(expected) + 1)]
    assert [[row[1], *map(float, row[2:])] for row in rows] == \
        [[row[0], *map(float, row[1:])] for row in expected]


def test_predict_batch_with_a_bad_row_exits_4_naming_it(api, model, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("6.9,3.1,5.1,2.3\n6.9,3.1,five,2.3\n")
    result = run_cli(api, "predict", model, str(bad), "--batch")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "row 2, column 3: 'five' is not a number" in result.stderr
    assert result.stdout == ""


def test_predict_batch_refuses_stdin_and_pipes_with_a_usage_error(api, model, tmp_path):
    # The upload form is signed for the file's size: a pipe has none (it used
    # to end in an OSError traceback from the form encoder).
    pipe = tmp_path / "rows"
    os.mkfifo(pipe)
    for rows in (str(pipe), "-"):
        result = run_cli(api, "predict", model, rows, "--batch")
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "--batch needs a regular file" in result.stderr
        assert "Traceback" not in result.stderr


def test_predict_batch_escapes_formula_labels(stack, hostile_model, tmp_path):
    output = tmp_path / "out.csv"
    result = run_cli(stack.api, "predict", hostile_model,
                     str(_hostile_rows(tmp_path / "rows.csv")), "--batch", "--output", str(output))
    assert result.returncode == 0, result.stderr
    header, *rows = list(csv.reader(io.StringIO(output.read_text(), newline="")))
    assert [row[1] for row in rows] == ["'" + HOSTILE_LABELS[0], "'@SUM(1+1)", "'-2+3", "[/x]",
                                        "\x1b]0;pwned\x07\x1b[2Jred", "\x9b31mc1", "\u202eevil",
                                        "-1.5"]
    assert header[:2] == ["row", "label"] and "'@SUM(1+1)" in header


def test_delete_then_status_exits_3(api, model):
    # runs last in this module: the shared model is gone afterwards
    result = run_cli(api, "delete", model)
    assert result.returncode == 0, result.stderr
    assert run_cli(api, "status", model).returncode == 3
    assert run_cli(api, "delete", model).returncode == 3
