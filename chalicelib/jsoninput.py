"""Prediction rows sent as JSON: {"instances": [[x1, x2, ...], ...]}, or, for
a model trained with a header row, {"records": [{"name": x, ...}, ...]}.

Errors say where and what, like the CSV parser's, and use its error type, so
the API answers both the same way.
"""
from __future__ import annotations

import math
from array import array

import numpy as np
import orjson

from chalicelib.csvdata import CsvError

SHAPE = '{"instances": [[feature, ...], ...]}'


class JsonRows:
    """A prediction body's rows as read before the model is known: the shape
    the OpenAPI document gives (instances: non-empty lists of finite numbers;
    records: objects of finite numbers), checked; what depends on the model
    (how many features, their names) is checked by matrix()."""

    def __init__(self, instances: tuple[array, list[int]] | None, records: list | None):
        self._instances = instances
        self._records = records

    def matrix(self, n_features: int, feature_names: list[str] | None = None) -> np.ndarray:
        if self._records is not None:
            if feature_names is None:
                raise CsvError("records (rows by feature name) need a model trained with a "
                               f"header row (?header=true), and this model has none; send {SHAPE}")
            return _record_matrix(self._records, feature_names)
        values, widths = self._instances
        for number, width in enumerate(widths, start=1):
            if width != n_features:
                raise CsvError(f"instance {number} has {width} values, but the model "
                               f"expects {n_features} features")
        return np.frombuffer(values, dtype=np.float64).reshape(len(widths), n_features)


def read_rows(body: bytes) -> JsonRows:
    """The body's rows, whatever the model; CsvError if it is not the shape the
    document gives, so that a malformed body is refused in every model state."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CsvError(f"the body is not JSON ({error})") from None
    if isinstance(document, dict) and "records" in document and "instances" not in document:
        records = document["records"]
        if not isinstance(records, list) or not records:
            raise CsvError("records must be a non-empty list of objects")
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise CsvError(f"record {number} is not an object of feature values")
            for name, value in record.items():
                _check_number(value, f"record {number}, {name!r}")
        return JsonRows(None, records)
    if isinstance(document, dict) and "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise CsvError("instances must be a non-empty list of rows")
        return JsonRows(_instance_values(instances), None)
    raise CsvError(f"expected an object {SHAPE}")


def _check_number(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CsvError(f"{where}: {value!r} is not a number")
    if not math.isfinite(value):
        raise CsvError(f"{where}: {value!r} is not a finite number")


def _instance_values(instances: list) -> tuple[array, list[int]]:
    # Straight into one buffer of doubles (8 bytes a value) as the rows are
    # checked, next to the parsed document rather than a second copy of it.
    values, widths = array("d"), []
    for row_number, row in enumerate(instances, start=1):
        if not isinstance(row, list):
            raise CsvError(f"instance {row_number} is not a list of numbers")
        if not row:
            raise CsvError(f"instance {row_number} is an empty list; it needs the "
                           "model's feature values")
        for column, value in enumerate(row, start=1):
            _check_number(value, f"instance {row_number}, value {column}")
        try:
            values.extend(row)
        except OverflowError:  # integers beyond float64
            raise CsvError(f"instance {row_number} holds a number too large for 64-bit "
                           "floats") from None
        widths.append(len(row))
    return values, widths


def _record_matrix(records: list[dict], names: list[str]) -> np.ndarray:
    values = array("d")
    for number, record in enumerate(records, start=1):
        missing = [name for name in names if name not in record]
        extra = sorted(set(record) - set(names))
        if missing or extra:
            problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                       ([f"has unknown names {', '.join(extra)}"] if extra else [])
            raise CsvError(f"record {number} {' and '.join(problems)} (the model's features: "
                           f"{', '.join(names)})")
        try:
            values.extend(record[name] for name in names)
        except OverflowError:
            raise CsvError(f"record {number} holds a number too large for 64-bit "
                           "floats") from None
    return np.frombuffer(values, dtype=np.float64).reshape(len(records), len(names))
