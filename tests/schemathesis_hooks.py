"""schemathesis hooks for tests/test_schemathesis.py (loaded by `st run` through
SCHEMATHESIS_HOOKS=tests.schemathesis_hooks).

Generated model ids are random strings: nearly every request would meet a 404.
So a share of the generated ids name real models, one in every state (ready,
failed, training), given as JSON in MODELS_VARIABLE; DELETE gets a model of its
own, so that the others stay for the operations that follow. And a share of
the well-formed (positive) predictions send rows of the ready model's width, to
the ready model or the training one, so that predictions (202) and the
training answer (200) are checked too, not only refusals.
"""
from __future__ import annotations

import json
import os

import hypothesis.strategies as st
import schemathesis
from schemathesis.core import NOT_SET
from schemathesis.generation.meta import TestPhase

MODELS_VARIABLE = "ML_API_SCHEMATHESIS_MODELS"
# {"ready": id, "failed": id, "training": id, "to_delete": id, "n_features": 4}
_MODELS = json.loads(os.environ.get(MODELS_VARIABLE, "{}"))
_KEPT = sorted(_MODELS[state] for state in ("ready", "failed", "training") if state in _MODELS)
_DOOMED = [_MODELS["to_delete"]] if "to_delete" in _MODELS else []


@schemathesis.hook
def before_generate_path_parameters(context, strategy):
    real = _DOOMED if context.operation.method.upper() == "DELETE" else _KEPT
    if not real or "model_id" not in context.operation.path:
        return strategy
    return st.one_of(strategy, st.sampled_from(real).map(lambda id_: {"model_id": id_}))


def _rows(width: int):
    return st.lists(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=width,
                             max_size=width), min_size=1, max_size=5)


def _with_rows(case, target):
    # Only where no link chose the model (the stateful phase follows them) and
    # only for well-formed cases (a malformed one must stay malformed).
    fuzzing = case.meta is not None and case.meta.phase.name == TestPhase.FUZZING
    if target is not None and fuzzing and case.meta.generation.mode.is_positive \
            and case.media_type in ("text/csv", "application/json"):
        state, rows = target
        case.path_parameters = {"model_id": _MODELS[state]}
        case.body = ({"instances": rows} if case.media_type == "application/json" else
                     "".join(",".join(map(repr, row)) + "\n" for row in rows))
    return case


@schemathesis.hook
def before_generate_case(context, strategy):
    """For predictions, a share of the well-formed cases send rows of the ready
    model's width to the ready model (202), the training one ("Model is Training"
    200) or the failed one (409): only a well-formed body gets those answers, and
    each run must reach all three, whatever else it generates."""
    if "ready" not in _MODELS or context.operation.path != "/models/{model_id}" \
            or context.operation.method.upper() not in ("GET", "POST"):
        return strategy
    states = [state for state in ("ready", "training", "failed") if state in _MODELS]
    target = st.none() | st.tuples(st.sampled_from(states), _rows(_MODELS["n_features"]))
    return st.tuples(strategy, target).map(lambda pair: _with_rows(*pair))


@schemathesis.hook
def filter_case(context, case):
    """CSV is text: a body of another type (a malformed case's number, list or
    object) goes out as its text, and str(-1.9) is "-1.9", a well-formed body;
    it would be sent as a schema-violating request while being a valid one.
    schemathesis knows this of text/plain (negative_data_rejection skips such
    cases there) but not of text/csv, which it sends with the same serializer:
    such cases are not generated. Malformed CSV text (empty, blank) still is."""
    return not (case.media_type == "text/csv" and case.body is not NOT_SET
                and not isinstance(case.body, str))
