"""Prediction rows sent as JSON: {"instances": [[x1, x2, ...], ...]}.

Errors say where and what, like the CSV parser's, and use its error type, so
the API answers both the same way.
"""
from __future__ import annotations

import math

import numpy as np
import orjson

from chalicelib.csvdata import CsvError

SHAPE = '{"instances": [[feature, ...], ...]}'


def parse_instances(body: bytes, n_features: int) -> np.ndarray:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CsvError(f"the body is not JSON ({error})") from None
    if not isinstance(document, dict) or "instances" not in document:
        if isinstance(document, dict) and "records" in document:
            raise CsvError("records (rows by feature name) need a model trained with feature "
                           f"names, and this model has none; send {SHAPE}")
        raise CsvError(f"expected an object {SHAPE}")
    instances = document["instances"]
    if not isinstance(instances, list) or not instances:
        raise CsvError("instances must be a non-empty list of rows")
    for row_number, row in enumerate(instances, start=1):
        if not isinstance(row, list):
            raise CsvError(f"instance {row_number} is not a list of numbers")
        if len(row) != n_features:
            raise CsvError(f"instance {row_number} has {len(row)} values, but the model "
                           f"expects {n_features} features")
        for column, value in enumerate(row, start=1):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CsvError(f"instance {row_number}, value {column}: {value!r} is not a number")
            if not math.isfinite(value):
                raise CsvError(f"instance {row_number}, value {column}: {value!r} is not a "
                               "finite number")
    try:
        return np.array(instances, dtype=np.float64)
    except OverflowError:  # integers beyond float64
        raise CsvError("an instance holds a number too large for 64-bit floats") from None
