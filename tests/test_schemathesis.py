"""The running stack against its own OpenAPI document, with schemathesis.

The local stack starts as in tests/test_e2e.py (its `stack` fixture, with
tests/stack.py's running_stack: moto's server, the API server and the SQS
runner on free 127.0.0.1 ports, stopped with SIGINT). Models in each state are set up first (iris trained through
the API, one failed, one training, one to delete), so that generated requests
reach real models and not only 404s. The stack must serve exactly
chalicelib.openapi's document at GET /openapi.json; schemathesis then takes
that document and, for every operation, sends its examples, its coverage cases
(boundaries, each path's other methods) and a bounded number of generated
requests, valid and invalid, checking each answer:

- not_a_server_error: no 5xx;
- status_code_conformance: the status is one the document lists;
- content_type_conformance: the Content-Type is the one it lists for that status;
- response_schema_conformance: the body matches the schema;
- response_headers_conformance: required headers (Retry-After on 503) are there.

Bounded: 25 generated requests per operation, a fixed seed, no example
database. To explore further, set SCHEMATHESIS_SEED and SCHEMATHESIS_MAX_EXAMPLES.
"""
from __future__ import annotations

import collections
import os
import time

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from chalicelib import openapi
from chalicelib.queue import TrainingMessage
from tests.test_e2e import (FAILED, HTTP_TIMEOUT, IRIS, READY, _create_queued_item, _train,
                            _wait_for_training)
from tests.test_e2e import stack  # noqa: F401  (the fixture: a stack of this module's own)

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261127"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]

# Training data and prediction rows go out as text, like text/plain.
schemathesis.serializer.alias("text/csv", "text/plain")


@pytest.fixture(scope="module")
def models(stack) -> dict[str, str]:
    """A model in every state a client can see, and one to delete."""
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
            "to_delete": doomed}


# Generated ids include these stand-ins, swapped for the `models` fixture's
# real ids just before each request: schemathesis draws some cases (its
# examples) while pytest collects, before any fixture has run.
# (Only unreserved characters: schemathesis percent-encodes path parameters.)
REAL = {"REAL-ready": "ready", "REAL-failed": "failed", "REAL-training": "training"}
REAL_FOR_DELETE = {"REAL-to_delete": "to_delete"}
# "METHOD /path" -> Counter of the statuses answered, for the summary.
ANSWERS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

# The document as GET /openapi.json serves it (`served_document` checks that
# the stack serves exactly this). Loaded at import, so that every operation is a
# test of its own; the base URL comes from the stack at run time.
# (schemathesis.pytest.from_fixture, the lazy loader, fails on pytest 9.2:
# it sets Function._nodeid, which pytest no longer has.)
schema = schemathesis.openapi.from_dict(openapi.document(), config=schemathesis.Config.from_dict({
    "seed": SEED,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
    "phases": {
        "examples": {"enabled": True},
        # Also sends each path the methods it does not take. Not TRACE or QUERY:
        # the local server (chalice local's http.server handler) answers those
        # 501 before the app sees them, and API Gateway does not route them.
        "coverage": {"enabled": True,
                     "unexpected-methods": ["get", "put", "post", "delete", "options", "patch"]},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
}))


# The same for batches: one that is Done, one to delete.
REAL_BATCH, REAL_BATCH_FOR_DELETE = {"REAL-batch": "done"}, {"REAL-batch_to_delete": "to_delete"}


@schema.hook
def before_generate_path_parameters(context, strategy):
    """Some generated ids name real models; DELETE gets a model of its own, so
    that the others are still there for the operations that follow."""
    deleting = context.operation.method.upper() == "DELETE"
    if "{batch_id}" in context.operation.path:
        real = REAL_BATCH_FOR_DELETE if deleting else REAL_BATCH
        return st.one_of(strategy,
                         st.sampled_from(sorted(real)).map(lambda id_: {"batch_id": id_}))
    real = REAL_FOR_DELETE if deleting else REAL
    return st.one_of(strategy, st.sampled_from(sorted(real)).map(lambda id_: {"model_id": id_}))


@pytest.fixture(scope="module")
def batches(stack, models) -> dict[str, str]:
    """A batch of the ready model run to Done, and one to delete."""
    ids = {}
    for name in ("done", "to_delete"):
        answer = stack.http.post(f"{stack.api}/models/{models['ready']}/batches",
                                 data=b"6.9,3.1,5.1,2.3\n", headers={"Content-Type": "text/csv"},
                                 timeout=HTTP_TIMEOUT)
        assert answer.status_code == 202, answer.text
        ids[name] = answer.json()["batch_id"]
    for _ in range(600):
        if stack.http.get(f"{stack.api}/batches/{ids['done']}",
                          timeout=HTTP_TIMEOUT).json()["status"] == "Done":
            return ids
        time.sleep(0.1)
    pytest.fail(f"batch {ids['done']} not Done after 60 s\n{stack.output()}", pytrace=False)


# Feature rows for the ready model (iris: 4 features), so that predictions
# (202) are checked too, not only the refusals of random bodies.
_ROWS = st.lists(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=4, max_size=4),
                 min_size=1, max_size=5)


def _with_rows(case, rows):
    if rows is not None and case.media_type in ("text/csv", "application/json"):
        case.path_parameters = {"model_id": "REAL-ready"}
        case.body = ({"instances": rows} if case.media_type == "application/json" else
                     "".join(",".join(map(repr, row)) + "\n" for row in rows))
    return case


@schema.hook
def before_generate_case(context, strategy):
    """For predictions, a share of the cases send well-formed rows to the ready model."""
    if context.operation.path != "/models/{model_id}" or context.operation.method.upper() \
            not in ("GET", "POST"):
        return strategy
    return st.tuples(strategy, st.none() | _ROWS).map(lambda pair: _with_rows(*pair))


@pytest.fixture(scope="module")
def served_document(stack, models):
    answer = stack.http.get(f"{stack.api}/openapi.json", timeout=HTTP_TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == openapi.document(), "the stack serves another document"
    yield
    print("\nschemathesis: answers per operation (status: count)")
    for label, counts in sorted(ANSWERS.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_running_api_answers_as_its_openapi_document_says(case, stack, models, batches,
                                                              served_document):
    model_id = (case.path_parameters or {}).get("model_id")
    if model_id in REAL or model_id in REAL_FOR_DELETE:
        case.path_parameters["model_id"] = models[{**REAL, **REAL_FOR_DELETE}[model_id]]
    batch_id = (case.path_parameters or {}).get("batch_id")
    if batch_id in REAL_BATCH or batch_id in REAL_BATCH_FOR_DELETE:
        case.path_parameters["batch_id"] = batches[{**REAL_BATCH,
                                                    **REAL_BATCH_FOR_DELETE}[batch_id]]
    response = case.call(base_url=stack.api, session=stack.http, timeout=HTTP_TIMEOUT)
    ANSWERS[f"{case.method} {case.path}"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
