"""Prediction rows sent as JSON: {"instances": [[x1, x2, ...], ...]}, or, for
a model trained with a header row, {"records": [{"name": x, ...}, ...]}.

Errors say where and what, like the CSV parser's, and use its error type, so
the API answers both the same way.
"""
from __future__ import annotations

import math
from array import array
from typing import Iterator

import numpy as np
import orjson

from chalicelib.csvdata import CsvError

SHAPE = '{"instances": [[feature, ...], ...]}'


def _rows_from_records(records, names: list[str]) -> Iterator[list]:
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
        yield [record[name] for name in names]


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
        records = document["records"]
        if not isinstance(records, list) or not records:
            raise CsvError("records must be a non-empty list of objects")
        return _matrix(_rows_from_records(records, feature_names), len(records), n_features,
                       "record")
    if isinstance(document, dict) and "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise CsvError("instances must be a non-empty list of rows")
        return _matrix(instances, len(instances), n_features, "instance")
    raise CsvError(f"expected an object {SHAPE}")


def _matrix(rows, count: int, n_features: int, noun: str) -> np.ndarray:
    # Straight into one buffer of doubles (8 bytes a value) as the rows are
    # checked, next to the parsed document rather than a second copy of it.
    values = array("d")
    for row_number, row in enumerate(rows, start=1):
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
            values.extend(row)
        except OverflowError:  # integers beyond float64
            raise CsvError(f"{noun} {row_number} holds a number too large for 64-bit "
                           "floats") from None
    return np.frombuffer(values, dtype=np.float64).reshape(count, n_features)
