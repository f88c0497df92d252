"""Shared fixtures: moto's in-process AWS for fast unit tests; the emulators
the end-to-end tests run against (--emulator)."""
from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib import components
from chalicelib.config import Settings
from devstack import bootstrap, stage
pytest_plugins = ["tests.reliability"]

# The AWS emulators behind the end-to-end tests (a test that takes the
# `emulator` fixture runs once per emulator): moto's server and LocalStack
# (installed into .venv-localstack on first use; docs/localstack.md).
EMULATORS = ("moto", "localstack")


def pytest_addoption(parser):
    parser.addoption("--emulator", default=",".join(EMULATORS), metavar="NAMES",
                     help="comma-separated emulators for the end-to-end tests "
                          f"(default {','.join(EMULATORS)}): {', '.join(EMULATORS)}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "moto_only(reason): an end-to-end test run against moto's server only; "
                   "the reason says why (not about the emulator, or too heavy to run twice)")
    names = [name.strip() for name in config.getoption("--emulator").split(",") if name.strip()]
    unknown = sorted(set(names) - set(EMULATORS))
    if unknown or not names:
        raise pytest.UsageError(f"--emulator={config.getoption('--emulator')!r}: expected "
                                f"a comma-separated list of {', '.join(EMULATORS)}")
    config.emulators = list(dict.fromkeys(names))


def pytest_report_header(config):
    return f"emulators for the end-to-end tests: {', '.join(config.emulators)}"


def pytest_generate_tests(metafunc):
    if "emulator" in metafunc.fixturenames:
        emulators = metafunc.config.emulators
        if metafunc.definition.get_closest_marker("moto_only"):
            emulators = [name for name in emulators if name == "moto"]
        metafunc.parametrize("emulator", emulators, scope="module")

REPO = Path(__file__).resolve().parent.parent
IRIS = (REPO / "iris.csv").read_bytes()
TEST_SIGNING_KEY = "test-signing-key-0123456789abcdef"


@pytest.fixture
def aws(monkeypatch):
    """moto's in-process mocks with the dev stage's resources created."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MODEL_SIGNING_KEY", TEST_SIGNING_KEY)
    for name, value in stage.stage_environment("dev").items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        components.reset()
        session = boto3.session.Session()
        bootstrap.bootstrap(session, Settings.from_env(), visibility_timeout=30)
        yield session
    components.reset()


def queue_messages(session, queue_name: str) -> list[dict]:
    sqs = session.client("sqs")
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                               AttributeNames=["All"]).get("Messages", [])



def two_class_lines(min_bytes: int, seed: int) -> list[str]:
    """CSV lines (3 features, label a or b, split by x + y > 0) adding up to
    at least `min_bytes`: a file over API Gateway's 10 MB for the upload path."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < min_bytes:
        x, y = rng.uniform(-5, 5), rng.uniform(-5, 5)
        line = f"{x:.9f},{y:.9f},{rng.uniform(0, 1):.9f},{'a' if x + y > 0 else 'b'}\n"
        lines.append(line)
        size += len(line)
    return lines

API_KEYS = ("alpha-key", "beta-key")


@pytest.fixture
def keyed(aws, monkeypatch):
    """A Chalice test client on the prod stage, whose API keys (API_KEYS) live in SSM."""
    from app import app

    prod = stage.stage_environment("prod")
    aws.client("ssm").put_parameter(Name=prod["API_KEYS_PARAMETER"], Type="SecureString",
                                    Value=",".join(API_KEYS))
    for name, value in prod.items():
        monkeypatch.setenv(name, value)
    bootstrap.bootstrap(aws, Settings.from_env())
    components.reset()
    with Client(app, stage_name="prod") as client:
        yield client


# What both clients (mlapi_cli/output.py and the dashboard's script) must make
# of a value before it goes into a CSV file: (value, the cell written). Text a
# spreadsheet would run as a formula gets an apostrophe (OWASP's CSV-injection
# list: = + - @ tab CR at the start); plain numbers, as numbers or as text,
# stay numbers.
SPREADSHEET_CELLS = [
    ('=HYPERLINK("http://example.invalid/x","click")',
     '\'=HYPERLINK("http://example.invalid/x","click")'),
    ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("-", "'-"), ("-inf", "'-inf"), ("- 1", "'- 1"), ("-1.5.2", "'-1.5.2"),
    ("-1.5", "-1.5"), ("+2", "+2"), ("-1e-05", "-1e-05"), ("-.5E3", "-.5E3"), ("-7", "-7"),
    ("setosa", "setosa"), ("a=b", "a=b"), ("1-2", "1-2"), (" =1", " =1"), ("", ""),
    (-1.5, -1.5), (-3, -3), (0.25, 0.25), (7, 7),
]

# What both clients show for a value from the server: control characters (C0
# but the line feed, DEL, C1) and bidirectional controls as escapes.
VISIBLE_TEXT = [
    ("setosa", "setosa"), ("[/x]", "[/x]"), ("two\nlines", "two\nlines"),
    ("\x1b]0;pwned\x07title", "\\x1b]0;pwned\\x07title"), ("\x1b[2Jred", "\\x1b[2Jred"),
    ("\x9b31m", "\\x9b31m"), ("a\rb\tc\x00d\x7f", "a\\x0db\\x09c\\x00d\\x7f"),
    ("\u202eevil\u2066", "\\u202eevil\\u2066"),
    ("caf\u00e9 \u00a0 \u4e2d", "caf\u00e9 \u00a0 \u4e2d"),
]

# Labels anyone who trains a model can choose: formulas for a spreadsheet,
# rich markup, terminal escape sequences (set the window title, clear the
# screen, a C1 CSI) and a bidirectional override; "-1.5" is a text label
# (fractional labels stay text) that must stay a number in a CSV file.
HOSTILE_LABELS = [
    '=HYPERLINK("http://example.invalid/x","click")', "@SUM(1+1)", "-2+3", "[/x]",
    "\x1b]0;pwned\x07\x1b[2Jred", "\x9b31mc1", "\u202eevil", "-1.5",
]


def hostile_training_csv() -> str:
    """Six identical rows per label in HOSTILE_LABELS, each label with its own
    feature set to 10."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for index, label in enumerate(HOSTILE_LABELS):
        row = [10 if j == index else 0 for j in range(len(HOSTILE_LABELS))]
        writer.writerows([row + [label]] * 6)
    return text.getvalue()


def hostile_rows() -> str:
    """One feature row per label, in HOSTILE_LABELS' order."""
    return "".join(",".join("10" if j == index else "0" for j in range(len(HOSTILE_LABELS)))
                   + "\n" for index in range(len(HOSTILE_LABELS)))
