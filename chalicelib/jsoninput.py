"""Prediction rows sent as JSON: {"instances": [[x1, x2, ...], ...]}, or, for
a model trained with a header row, {"records": [{"name": x, ...}, ...]}.

Errors say where and what, like the CSV parser's, and use its error type, so
the API answers both the same way.
"""
from __future__ import annotations

import math

import numpy as np
import orjson

from chalicelib.csvdata import CsvError

SHAPE = '{"instances": [[feature, ...], ...]}'


def _rows_from_records(records, names: list[str]) -> list:
    if not isinstance(records, list) or not records:
        raise CsvError("records must be a non-empty list of objects")
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise CsvError(f"record {number} is not an object of feature values")
        missing = [name for name in names if name not in record]
        extra = sorted(set(record) - set(names))
        if missing or extra:
            problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                       ([f"has unknown names {', '.join(extra)}"] if extra else [])
            raise CsvError(f"record {number} {' and '.join(problems)} (the model's features: "
                           f"{', '.join(names)})")
        rows.append([record[name] for name in names])
    return rows


def parse_instances(body: bytes, n_features: int,
                    feature_names: list[str] | None = None) -> np.ndarray:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CsvError(f"the body is not JSON ({error})") from None
    if isinstance(document, dict) and "records" in document and "instances" not in document:
        if feature_names is None:
            raise CsvError("records (rows by feature name) need a model trained with a header "
                           f"row (?header=true), and this model has none; send {SHAPE}")
        instances = _rows_from_records(document["records"], feature_names)
        noun = "record"
    elif isinstance(document, dict) and "instances" in document:
        instances, noun = document["instances"], "instance"
    else:
        raise CsvError(f"expected an object {SHAPE}")
    return _matrix(instances, n_features, noun)


def _matrix(instances, n_features: int, noun: str) -> np.ndarray:
    if not isinstance(instances, list) or not instances:
        raise CsvError("instances must be a non-empty list of rows")
    for row_number, row in enumerate(instances, start=1):
        if not isinstance(row, list):
            raise CsvError(f"{noun} {row_number} is not a list of numbers")
        if len(row) != n_features:
            raise CsvError(f"{noun} {row_number} has {len(row)} values, but the model "
                           f"expects {n_features} features")
        for column, value in enumerate(row, start=1):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CsvError(f"{noun} {row_number}, value {column}: {value!r} is not a number")
            if not math.isfinite(value):
                raise CsvError(f"{noun} {row_number}, value {column}: {value!r} is not a "
                               "finite number")
    try:
        return np.array(instances, dtype=np.float64)
    except OverflowError:  # integers beyond float64
        raise CsvError(f"an {noun} holds a number too large for 64-bit floats") from None
