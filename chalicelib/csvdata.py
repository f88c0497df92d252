"""The one CSV parser: training data (features + label last) and feature rows.

Errors name the row (1-based line of the body) and column and say what was
expected, so a client can fix its file without guessing.
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from array import array
from dataclasses import dataclass
from typing import Iterator

import numpy as np

Label = int | float | str


class CsvError(ValueError):
    """The body is not usable data; the message says why."""


@dataclass(frozen=True)
class TrainingData:
    features: np.ndarray  # (n_rows, n_features) float64
    labels: list[Label]
    classes: list[Label]  # sorted, with the type they had in the CSV
    feature_names: list[str] | None = None  # from a header row, when there is one

    @property
    def n_rows(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]


def _rows(body: bytes) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number, fields) for every non-blank line."""
    if not body or not body.strip():
        raise CsvError("the body is empty")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CsvError(f"the body is not UTF-8 text (byte {error.start} is invalid)") from None
    if "\x00" in text:
        raise CsvError("the body contains a NUL byte; it is not CSV text")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise CsvError(f"row {reader.line_num}: {error}") from None
        if not fields or all(not field.strip() for field in fields):
            continue
        yield reader.line_num, fields


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


_TRAINING_HEADER_HINT = " (a header row? send ?header=true)"
_FEATURES_HEADER_HINT = " (send feature rows only, without a header row)"


def _number(value: str, row: int, column: int, header_hint: str) -> float:
    try:
        number = float(value)
    except ValueError:
        if not value.strip():
            raise CsvError(f"row {row}, column {column}: the value is missing") from None
        hint = header_hint if row == 1 else ""
        raise CsvError(f"row {row}, column {column}: {_show(value)} is not a number{hint}") from None
    if not math.isfinite(number):
        raise CsvError(f"row {row}, column {column}: {_show(value)} is not a finite number")
    return number


_INT64 = range(-(2**63), 2**63)
# The classes are stored in the model's DynamoDB item (400 KB at most, shared
# with the embedded serving arrays).
CLASSES_LIMIT_BYTES = 100_000


def _typed_labels(raw: list[str]) -> list[Label]:
    """Labels keep the type they had: all integers, else all whole numbers
    written as floats ("1.0"), else text. Fractional numbers stay text:
    scikit-learn takes them for a regression target and refuses to classify."""
    try:
        integers = [int(label) for label in raw]
    except ValueError:
        pass
    else:
        # Beyond int64 numpy (and so scikit-learn) cannot hold them as numbers.
        return integers if all(i in _INT64 for i in integers) else raw
    try:
        numbers = [float(label) for label in raw]
    except ValueError:
        return raw
    # Whole and within int64: scikit-learn checks classes by casting to integers.
    whole = all(math.isfinite(n) and n.is_integer() and int(n) in _INT64 for n in numbers)
    return numbers if whole else raw


def parse_training(body: bytes, header: bool = False) -> TrainingData:
    """Rows of features with the label last; with `header`, the first row
    names the columns (the features' names are kept, the label's is not)."""
    features: list[list[float]] = []
    raw_labels: list[str] = []
    width = None
    names = None
    for row, fields in _rows(body):
        if width is None:
            width = len(fields)
            if width < 2:
                raise CsvError(
                    f"row {row} has 1 value; expected at least one feature and the label"
                )
            if header:
                names = _feature_names(fields[:-1], row)
                continue
        elif len(fields) != width:
            raise CsvError(f"row {row} has {len(fields)} values, expected {width}")
        features.append([_number(v, row, col, _TRAINING_HEADER_HINT)
                         for col, v in enumerate(fields[:-1], start=1)])
        label = fields[-1].strip()
        if not label:
            raise CsvError(f"row {row}, column {width}: the label is missing")
        raw_labels.append(label)
    if width is None:
        raise CsvError("the body is empty")
    if not raw_labels:
        raise CsvError("the body has a header row but no data rows")
    labels = _typed_labels(raw_labels)
    classes = sorted(set(labels))
    classes_size = len(json.dumps(classes))
    if classes_size > CLASSES_LIMIT_BYTES:
        raise CsvError(f"the {len(classes)} class labels take {classes_size:,} bytes as JSON; "
                       f"at most {CLASSES_LIMIT_BYTES:,} fit with the model's status")
    if len(classes) < 2:
        raise CsvError(
            f"all {len(labels)} rows have the label {classes[0]!r}; "
            "training needs at least 2 classes"
        )
    matrix = np.array(features, dtype=np.float64)
    _check_scalable(matrix)
    return TrainingData(matrix, labels, classes, names)


def _feature_names(fields: list[str], row: int) -> list[str]:
    names = [field.strip() for field in fields]
    for column, name in enumerate(names, start=1):
        if not name:
            raise CsvError(f"row {row}, column {column}: the header names no feature")
        if names.index(name) != column - 1:
            raise CsvError(f"row {row}, column {column}: the header names {name!r} twice")
    if len(json.dumps(names)) > CLASSES_LIMIT_BYTES:
        raise CsvError("the header's feature names are too long to store with the model")
    return names


def _check_scalable(features: np.ndarray) -> None:
    """Standard scaling squares the values; finite inputs can still overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        variance = features.var(axis=0)
    for column in np.flatnonzero(~np.isfinite(variance)):
        raise CsvError(
            f"column {column + 1}: the values are too large to scale (their variance "
            "overflows 64-bit floats); divide the column by a constant first"
        )


# Above this size numpy's C parser is tried first (about 20x faster than the
# csv module on 150k rows); any row it cannot take sends the body through the
# precise parser below, which decides and explains.
_FAST_PARSE_BYTES = 4096


def parse_features(body: bytes, n_features: int) -> np.ndarray:
    """Feature rows to predict on: exactly n_features numbers a row, no label."""
    if len(body) >= _FAST_PARSE_BYTES:
        matrix = _fast_features(body, n_features)
        if matrix is not None:
            return matrix
    return _precise_features(body, n_features)


def _fast_features(body: bytes, n_features: int) -> np.ndarray | None:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if '"' in text or "\x00" in text or "\r" in text:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            matrix = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64,
                                ndmin=2, comments=None)
    except ValueError:
        return None
    if matrix.shape[0] == 0 or matrix.shape[1] != n_features or not np.isfinite(matrix).all():
        return None
    return matrix


def _precise_features(body: bytes, n_features: int) -> np.ndarray:
    # One flat buffer of doubles, 8 bytes a value: a list of Python floats per
    # row took about 100 bytes a value (330 MB for a 6 MB body of short rows).
    values = array("d")
    rows = 0
    for row, fields in _rows(body):
        if len(fields) != n_features:
            raise CsvError(
                f"row {row} has {len(fields)} values, but the model expects "
                f"{n_features} features (send the features only, no label)"
            )
        values.extend([_number(v, row, col, _FEATURES_HEADER_HINT)
                       for col, v in enumerate(fields, start=1)])
        rows += 1
    if not rows:
        raise CsvError("the body is empty")
    return np.frombuffer(values, dtype=np.float64).reshape(rows, n_features)
