"""The running stack against its own OpenAPI document, with schemathesis at
full strength: what a new user gets from

    st run http://127.0.0.1:PORT/openapi.json --checks all \\
        --phases examples,coverage,fuzzing,stateful -n 60 --seed SEED

run from the checkout (so with its schemathesis.toml, which says why the one
configured check is configured), for two seeds, on a local stack of this
module's own (tests/stack.py's running_stack; the emulator is a parameter).

- every check: no 5xx; statuses, content types, headers and bodies as the
  document lists them; schema-valid requests accepted and schema-violating ones
  refused; 405 with Allow for undeclared methods; after DELETE, 404 (use after
  free); after POST /models, the model is there (resource availability); keys;
- every phase: the document's examples; coverage (boundaries, each path's
  other methods, missing and malformed parts); fuzzing (generated requests,
  valid and invalid, 60 at most per operation); stateful (chains that follow
  the links from POST /models to the model's routes, so models it trained
  are predicted from, downloaded, deleted).

Models in each state are set up first (iris trained, one failed, one that
stays training, one to delete); tests/schemathesis_hooks.py lets a share of
the generated ids name them and a share of the predictions send rows of the
ready model's width. Each run must find nothing, and must have reached every
state (202, 409 and "Model is Training" from predict; 204 from DELETE).
To explore further: SCHEMATHESIS_SEEDS=1,2,3 SCHEMATHESIS_MAX_EXAMPLES=200.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chalicelib import openapi
from chalicelib.queue import TrainingMessage
from tests.reliability import record
from tests.schemathesis_hooks import MODELS_VARIABLE
from tests.stack import REPO, running_stack
from tests.test_e2e import FAILED, HTTP_TIMEOUT, IRIS, READY, _create_queued_item, _train, \
    _wait_for_training

pytestmark = pytest.mark.e2e

# The emulators the stack runs on; LocalStack joins here once running_stack
# takes emulator=... (tests/stack.py).
EMULATORS = ["moto"]
SEEDS = [int(seed) for seed in os.environ.get("SCHEMATHESIS_SEEDS", "20261202,17").split(",")]
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"))
PHASES = "examples,coverage,fuzzing,stateful"
RUN_TIMEOUT = 600  # seconds; a run takes about one minute on 2 cores


@pytest.fixture(scope="module", params=EMULATORS)
def emulator(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def stack(emulator, tmp_path_factory):
    options = {} if emulator == "moto" else {"emulator": emulator}
    with running_stack(tmp_path_factory.mktemp(f"devstack-{emulator}"), **options) as running:
        yield running


@pytest.fixture
def models(stack) -> dict:
    """A model in every state a client can see, and one to delete; new for each
    run (a run's stateful phase deletes models it finds in GET /models)."""
    ready = _train(stack, IRIS)
    assert ready.status["status"] == READY, ready.status

    failing, task_id, key = _create_queued_item(stack, b"1,2,a\n3,4,a\n5,6,a\n", n_features=2)
    stack.sqs.send_message(QueueUrl=stack.queue_url(),
                           MessageBody=TrainingMessage(failing, key, task_id).to_json())
    assert _wait_for_training(stack, failing)["status"] == FAILED

    # Queued, with no training message sent: it stays "Model is Training".
    training, _, _ = _create_queued_item(stack, b"1,2,a\n3,4,b\n", n_features=2)
    doomed, _, _ = _create_queued_item(stack, b"1,2,a\n3,4,b\n", n_features=2)
    return {"ready": ready.model_id, "failed": failing, "training": training,
            "to_delete": doomed, "n_features": ready.status["n_features"]}


def test_the_stack_serves_exactly_the_document(stack):
    answer = stack.http.get(f"{stack.api}/openapi.json", timeout=HTTP_TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == openapi.document(), "the stack serves another document"


def _interactions(report: Path):
    """(phase, operation label, request URI, status) of every answer in an NDJSON report."""
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        for interaction in finished["recorder"].get("interactions", {}).values():
            response = interaction.get("response")
            if response is not None:
                yield (finished["phase"], finished["recorder"]["label"],
                       interaction["request"]["method"], interaction["request"]["uri"],
                       response["status_code"])


@pytest.mark.parametrize("seed", SEEDS)
def test_schemathesis_with_every_check_and_phase_finds_nothing(stack, emulator, models, seed,
                                                               tmp_path):
    report = tmp_path / "events.ndjson"
    command = [str(Path(sys.executable).with_name("st")), "run", f"{stack.api}/openapi.json",
               "--checks", "all", "--phases", PHASES, "--max-examples", str(MAX_EXAMPLES),
               "--seed", str(seed), "--workers", "2", "--generation-database", "none",
               "--request-timeout", str(HTTP_TIMEOUT), "--no-color",
               "--report", "ndjson", "--report-ndjson-path", str(report)]
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
                   MODELS_VARIABLE: json.dumps(models)}
    started = time.monotonic()
    run = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis (seed {seed}) found problems:\n{output}\n" \
                                f"(the stack's output: {stack.output_path})"
    assert "Configuration:    " + str(REPO / "schemathesis.toml") in output, output

    answers = list(_interactions(report))
    by_phase = collections.Counter(phase for phase, *_ in answers)
    by_operation = collections.defaultdict(collections.Counter)
    for _, label, _, _, status in answers:
        by_operation[label][status] += 1
    summary = [line for line in output.splitlines() if "generated" in line or "Scenarios" in line]
    print(f"\nschemathesis seed {seed}: {took:.0f} s, {len(answers)} answers "
          f"{dict(by_phase)}; {'; '.join(s.strip() for s in summary)}")
    for label, counts in sorted(by_operation.items()):
        print(f"  {label}: {sum(counts.values())} answers {dict(sorted(counts.items()))}")

    def statuses(model_id: str, methods=("GET", "POST")) -> set[int]:
        return {status for _, label, method, uri, status in answers
                if method in methods and urlsplit(uri).path == f"/models/{model_id}"}
    # The hooks reached every state: otherwise the run checked little but 404s.
    assert 202 in statuses(models["ready"]), "no prediction from the ready model"
    assert 409 in statuses(models["failed"]), "no predict request reached the failed model"
    assert 200 in statuses(models["training"]), "no predict request reached the training model"
    assert any(label == "DELETE /models/{model_id}" and status == 204
               for _, label, _, _, status in answers), "no DELETE removed a model"
    statuses_seen = collections.Counter(status for *_, status in answers)
    record("API contract", f"schemathesis, seed {seed}",
           f"st run --checks all --phases {PHASES} -n {MAX_EXAMPLES} on {emulator}: "
           f"{', '.join(f'{phase} {count}' for phase, count in sorted(by_phase.items()))}",
           len(answers), f"no failure; answers {dict(sorted(statuses_seen.items()))}; "
                          f"{took:.0f} s")
