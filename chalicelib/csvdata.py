"""The one CSV parser: training data (features + label last) and feature rows.

Errors name the row (1-based line of the body) and column and say what was
expected, so a client can fix its file without guessing.

Training bodies are read in pieces of a few MB from bytes or a stream (S3's
body), each piece by numpy's C reader when it can take it and by the csv
module when it cannot: the precise reader then decides, so both accept the
same files, give the same numbers and the same errors. Memory stays near the
float64 matrix itself, whatever the body's size.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from array import array
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

Label = int | float | str


class CsvError(ValueError):
    """The body is not usable data; the message says why."""


@dataclass(frozen=True)
class TrainingData:
    features: np.ndarray  # (n_rows, n_features) float64, C order
    codes: np.ndarray     # (n_rows,) each row's class, an index into classes
    classes: list[Label]  # sorted, with the type they had in the CSV
    feature_names: list[str] | None = None  # from a header row, when there is one

    @property
    def n_rows(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def labels(self) -> np.ndarray:
        """Each row's label, with its CSV type (a new array: for small data)."""
        return np.asarray(self.classes)[self.codes]

    @classmethod
    def from_labels(cls, features: np.ndarray, labels: list[Label],
                    feature_names: list[str] | None = None) -> "TrainingData":
        classes = sorted(set(labels))
        index = {label: code for code, label in enumerate(classes)}
        return cls(np.ascontiguousarray(features, dtype=np.float64),
                   np.array([index[label] for label in labels], dtype=np.int32), classes,
                   feature_names)


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
    yield from _rows_of(text, 1)


def _rows_of(text: str, first_line: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank record of text, whose first
    line is the body's line first_line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise CsvError(f"row {reader.line_num + first_line - 1}: {error}") from None
        if not fields or all(not field.strip() for field in fields):
            continue
        yield reader.line_num + first_line - 1, fields


def _after_line_break(data: bytes, start: int) -> int:
    """The index just after the first line break at or after start."""
    for index in range(start, len(data)):
        if data[index] == 0x0A:
            return index + 1
        if data[index] == 0x0D:
            return index + 2 if data[index + 1:index + 2] == b"\n" else index + 1
    return len(data)


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
# Beyond this many classes a multinomial model, its metrics and its answers
# grow with the square of the classes (8,000 classes of 1 row each took the
# trainer past 3 GB); no logistic regression worth serving needs more.
MAX_CLASSES = 1_000


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


class DatasetTooLarge(CsvError):
    """The data would not fit in the trainer's memory; the message names the size."""


# The body is parsed in pieces of about this size, each cut after a whole
# record: memory stays at the feature matrix plus one piece, whatever the size.
CHUNK_BYTES = 8 * 2**20
# A record (a quoted field may hold line breaks) longer than this is refused
# rather than buffered without bound.
MAX_RECORD_BYTES = 4 * CHUNK_BYTES
_BOM = b"\xef\xbb\xbf"


def _line_breaks(data: bytes) -> int:
    # As the csv module counts lines: \n, \r\n and a lone \r each end one.
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _record_end(buffer: bytes) -> int:
    """Where the last whole record in buffer ends (after its \\n), or 0. A
    line break inside quotes is not the end of a record: an even number of
    quotes comes before a real one (a doubled "" inside quotes counts twice)."""
    end = buffer.rfind(b"\n")
    if end < 0 or b'"' not in buffer:
        return end + 1
    quotes_before = buffer.count(b'"', 0, end)
    while end >= 0 and quotes_before % 2:  # one pass back, whatever the quoting
        previous = buffer.rfind(b"\n", 0, end)
        quotes_before -= buffer.count(b'"', previous + 1, end)
        end = previous
    return end + 1


def _pieces(source, line: int = 1, offset: int = 0) -> Iterator[tuple[bytes, int, int]]:
    """(piece, its first line number, its byte offset) for a body (bytes) or a
    stream with .read(n) (S3's StreamingBody), each piece whole records. A
    stream that starts part-way into a body (at a record's start) gives that
    place's `line` and `offset`."""
    read = source.read if hasattr(source, "read") else io.BytesIO(source).read
    pending = b""
    while True:
        data = read(CHUNK_BYTES)
        if not data:
            break
        buffer = pending + data if pending else data
        end = _record_end(buffer)
        if end == 0:
            if len(buffer) > MAX_RECORD_BYTES:
                raise CsvError(f"row {line}: one record runs on for more than "
                               f"{MAX_RECORD_BYTES // 2**20} MB (a quote that is never closed?)")
            pending = buffer
            continue
        piece, pending = buffer[:end], buffer[end:]
        yield piece, line, offset
        line, offset = line + _line_breaks(piece), offset + len(piece)
    if pending:
        yield pending, line, offset


def _label_hashes(words: np.ndarray) -> np.ndarray:
    """One uint64 per label from its bytes seen as uint64 words (a collision is
    caught by comparing the labels themselves)."""
    key = np.zeros(words.shape[0], np.uint64)
    with np.errstate(over="ignore"):
        for column in range(words.shape[1]):
            key = key * np.uint64(0x9E3779B97F4A7C15) + words[:, column]
            key ^= key >> np.uint64(29)
    return key


def _distinct(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct byte strings of a fixed-width 'S' array and each row's
    index into them; hashing first is about 30x faster than sorting strings."""
    words = labels.view(np.uint64).reshape(len(labels), -1)
    _, first, inverse = np.unique(_label_hashes(words), return_index=True,
                                  return_inverse=True)
    distinct = labels[first]
    if not np.array_equal(distinct[inverse], labels):  # a hash collision: sort instead
        distinct, inverse = np.unique(labels, return_inverse=True)
    return distinct, inverse


class _TrainingBuilder:
    """Collects the pieces of one training body: the matrix, grown in place,
    and each row's class as a small integer (a list of a million label strings
    takes more memory than their numbers)."""

    def __init__(self, header: bool, size_hint: int | None,
                 max_rows: Callable[[int], int] | None):
        self._header = header
        self._size_hint = size_hint
        self._max_rows_for = max_rows
        self._max_rows: int | None = None
        self._width: int | None = None
        self._names: list[str] | None = None
        self._matrix: np.ndarray | None = None
        self._raw_codes: np.ndarray | None = None
        self._rows = 0
        self._bytes_seen = 0
        self._raw_labels: dict[str, int] = {}  # stripped label text -> its code

    def add(self, piece: bytes, line: int, offset: int) -> None:
        self._bytes_seen = offset + len(piece)
        if offset == 0 and piece.startswith(_BOM):
            piece, offset = piece[len(_BOM):], -len(_BOM)  # offsets count after the BOM
        if not piece.isascii():
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CsvError(f"the body is not UTF-8 text (byte {offset + error.start} "
                               "is invalid)") from None
        if b"\x00" in piece:
            raise CsvError("the body contains a NUL byte; it is not CSV text")
        skip = 0
        if self._width is None:
            skip = self._first_record(piece, line)
            if skip is None:
                return  # only blank lines so far
        fast = None if b'"' in piece else self._fast(piece[skip:] if skip else piece)
        if fast is None:
            features, labels = self._precise(piece, line, skip_header=skip > 0)
            codes = np.array([self._code(label) for label in labels], dtype=np.int32)
        else:
            features, texts, inverse = fast
            codes = np.array([self._code(text) for text in texts], dtype=np.int32)[inverse]
        self._append(features, codes)
        if len(self._raw_labels) > MAX_CLASSES:
            self._check_classes()

    def _first_record(self, piece: bytes, line: int) -> int | None:
        """Reads the first record, which sets the width and, with a header,
        names the features. Returns where the rows after it start (0 when it
        is data), or None if the piece is blank."""
        for row, fields in _rows_of(piece.decode("utf-8"), line):
            self._width = len(fields)
            if self._width < 2:
                raise CsvError(
                    f"row {row} has 1 value; expected at least one feature and the label")
            if not self._header:
                return 0
            self._names = _feature_names(fields[:-1], row)
            end = 0
            for _ in range(row - line + 1):  # the lines up to the header's last
                end = _after_line_break(piece, end)
            return end
        return None

    def _code(self, label: str) -> int:
        return self._raw_labels.setdefault(label, len(self._raw_labels))

    def _fast(self, data: bytes) -> tuple[np.ndarray, list[str], np.ndarray] | None:
        """numpy's C reader on a piece without quotes: the features, the
        distinct labels and each row's index into them. None when it cannot
        take every row as it is: the precise reader then decides."""
        label_bytes = 32
        while True:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "input contained no data"
                    # latin-1 hands every byte through: labels keep their
                    # UTF-8 bytes, and numbers are ASCII anyway.
                    table = np.loadtxt(io.BytesIO(data), delimiter=",", comments=None,
                                       encoding="latin-1", ndmin=1, dtype=np.dtype(
                                           [("x", np.float64, (self._width - 1,)),
                                            ("y", f"S{label_bytes}")]))
            except ValueError:
                return None
            labels = np.ascontiguousarray(table["y"])
            # A label that fills its field may have been cut: read again, wider.
            if len(labels) and labels.view(np.uint8).reshape(len(labels), -1)[:, -1].any():
                if label_bytes >= len(data):
                    return None
                label_bytes *= 8
                continue
            break
        features = table["x"]
        if not np.isfinite(features).all():
            return None
        if not len(labels):
            return features, [], np.zeros(0, np.intp)
        distinct, inverse = _distinct(labels)
        texts = [label.decode("utf-8").strip() for label in distinct.tolist()]
        if not all(texts):
            return None  # a missing label: the precise reader names its row
        return features, texts, inverse

    def _precise(self, piece: bytes, line: int, skip_header: bool
                 ) -> tuple[np.ndarray, list[str]]:
        """The csv module's reading of a piece: an error names its row and column."""
        features: list[list[float]] = []
        labels: list[str] = []
        width = self._width
        records = _rows_of(piece.decode("utf-8"), line)
        if skip_header:
            next(records)
        for row, fields in records:
            if len(fields) != width:
                raise CsvError(f"row {row} has {len(fields)} values, expected {width}")
            features.append([_number(v, row, col, _TRAINING_HEADER_HINT)
                             for col, v in enumerate(fields[:-1], start=1)])
            label = fields[-1].strip()
            if not label:
                raise CsvError(f"row {row}, column {width}: the label is missing")
            labels.append(label)
        return np.array(features, dtype=np.float64).reshape(-1, width - 1), labels

    def _append(self, features: np.ndarray, codes: np.ndarray) -> None:
        count, width = features.shape
        if count == 0:
            return
        needed = self._rows + count
        if self._max_rows_for is not None and self._max_rows is None:
            self._max_rows = self._max_rows_for(self._width)
        if self._max_rows is not None and needed > self._max_rows:
            raise DatasetTooLarge(
                f"the data has more than {self._max_rows:,} rows of {width} features "
                f"({self._bytes_seen / 1e6:,.1f} MB of CSV read so far), more than the "
                "trainer's memory can train")
        if self._matrix is None or needed > len(self._matrix):
            self._grow(needed, width)
        self._matrix[self._rows:needed] = features
        self._raw_codes[self._rows:needed] = codes
        self._rows = needed

    def _grow(self, needed: int, width: int) -> None:
        """Room for the rows still to come, estimated from the body's size.
        Growing goes through realloc, which moves the pages rather than
        copying the rows, so old and new arrays never exist side by side."""
        capacity = int(needed * 1.5) + 1024
        if self._size_hint and self._bytes_seen:
            capacity = max(needed, int(needed * self._size_hint / self._bytes_seen * 1.02) + 1024)
        if self._max_rows is not None:
            capacity = max(needed, min(capacity, self._max_rows))
        if self._matrix is None:
            self._matrix = np.empty((capacity, width), np.float64)
            self._raw_codes = np.empty(capacity, np.int32)
        else:
            self._matrix.resize((capacity, width), refcheck=False)
            self._raw_codes.resize(capacity, refcheck=False)

    def _check_classes(self) -> list[Label]:
        typed = _typed_labels(list(self._raw_labels))
        if len(set(typed)) > MAX_CLASSES:
            # Said as soon as a piece passes the limit, before reading on.
            raise CsvError(f"the labels name more than {MAX_CLASSES:,} classes; a model can "
                           f"have at most {MAX_CLASSES:,}")
        return typed

    def finish(self) -> TrainingData:
        if self._width is None:
            raise CsvError("the body is empty")
        if self._rows == 0:
            raise CsvError("the body has a header row but no data rows")
        self._matrix.resize((self._rows, self._width - 1), refcheck=False)
        self._raw_codes.resize(self._rows, refcheck=False)
        typed = self._check_classes()
        classes = sorted(set(typed))
        classes_size = len(json.dumps(classes))
        if classes_size > CLASSES_LIMIT_BYTES:
            raise CsvError(f"the {len(classes)} class labels take {classes_size:,} bytes as JSON; "
                           f"at most {CLASSES_LIMIT_BYTES:,} fit with the model's status")
        if len(classes) < 2:
            raise CsvError(
                f"all {self._rows} rows have the label {classes[0]!r}; "
                "training needs at least 2 classes")
        # Raw labels that mean the same class ("1" and "01") become one code.
        index = {label: code for code, label in enumerate(classes)}
        to_class = np.array([index[label] for label in typed], dtype=np.int32)
        codes = self._raw_codes
        np.take(to_class, codes, out=codes)
        _check_scalable(self._matrix)
        return TrainingData(self._matrix, codes, classes, self._names)


def parse_training(source, header: bool = False, *, size: int | None = None,
                   max_rows: Callable[[int], int] | None = None) -> TrainingData:
    """Rows of features with the label last; with `header`, the first row
    names the columns (the features' names are kept, the label's is not).

    `source` is the body (bytes) or a stream with .read(n), whose `size` in
    bytes helps size the matrix. `max_rows(columns)` bounds the rows: reading
    stops with DatasetTooLarge past it, before memory runs out."""
    if isinstance(source, (bytes, bytearray)):
        size = len(source)
    builder = _TrainingBuilder(header, size, max_rows)
    for piece, line, offset in _pieces(source):
        builder.add(piece, line, offset)
    return builder.finish()


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


# Rows at a time when a whole-matrix pass would need a temporary as large as
# the matrix.
BLOCK_ROWS = 65_536


def column_variance(features: np.ndarray) -> np.ndarray:
    """np.var(features, axis=0) (the same two passes: the mean, then the mean
    squared deviation), a block of rows at a time."""
    n, width = features.shape
    total, squares = np.zeros(width), np.zeros(width)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, BLOCK_ROWS):
            total += features[start:start + BLOCK_ROWS].sum(axis=0)
        mean = total / n
        for start in range(0, n, BLOCK_ROWS):
            deviation = features[start:start + BLOCK_ROWS] - mean
            squares += np.einsum("ij,ij->j", deviation, deviation)
    return squares / n


def _check_scalable(features: np.ndarray) -> None:
    """Standard scaling squares the values; finite inputs can still overflow."""
    variance = column_variance(features)
    for column in np.flatnonzero(~np.isfinite(variance)):
        raise CsvError(
            f"column {column + 1}: the values are too large to scale (their variance "
            "overflows 64-bit floats); divide the column by a constant first"
        )


# Above this size numpy's C parser is tried first (about 20x faster than the
# csv module on 150k rows); any row it cannot take sends the body through the
# precise parser below, which decides and explains.
_FAST_PARSE_BYTES = 4096


# A value: anything but whitespace (Python's or JavaScript's idea of it: the
# BOM), commas and line breaks. The OpenAPI document's pattern for feature rows.
FEATURE_ROWS_PATTERN = "[^\\s,\ufeff]"
_VALUE = re.compile(FEATURE_ROWS_PATTERN)


def check_feature_text(body: bytes) -> None:
    """What feature rows need whatever the model: UTF-8 text without NUL
    bytes, holding at least one value; CsvError otherwise. Checked before the
    model's state, so a malformed body is refused in every state."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CsvError(f"the body is not UTF-8 text (byte {error.start} is invalid)") from None
    if not _VALUE.search(text):
        raise CsvError("the body is empty")
    if "\x00" in text:
        raise CsvError("the body contains a NUL byte; it is not CSV text")


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


@dataclass(frozen=True)
class FeatureChunk:
    """One piece of a stream of feature rows, parsed."""
    features: np.ndarray  # (n, n_features) float64
    rows: np.ndarray      # (n,) each row's line number in the body, as errors name them
    end: int              # the byte offset just after the piece
    next_line: int        # the line number the next piece starts on


def stream_features(source, n_features: int, *, line: int = 1,
                    offset: int = 0) -> Iterator[FeatureChunk]:
    """parse_features for a body of any size: a piece of a few MB at a time,
    from bytes or a stream (S3's body, possibly opened at `offset`, a record's
    start on line `line`). The same rules and the same errors, with the row's
    line number in the whole body; memory stays at one piece."""
    rows = 0
    for piece, first, start in _pieces(source, line, offset):
        end, next_line = start + len(piece), first + _line_breaks(piece)
        if start == 0 and piece.startswith(_BOM):
            piece, start = piece[len(_BOM):], len(_BOM)
        if not piece.isascii():
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CsvError(f"the body is not UTF-8 text (byte {start + error.start} "
                               "is invalid)") from None
        if b"\x00" in piece:
            raise CsvError("the body contains a NUL byte; it is not CSV text")
        features, numbers = _piece_features(piece, first, n_features)
        rows += len(numbers)
        yield FeatureChunk(features, numbers, end, next_line)
    if rows == 0 and offset == 0:
        raise CsvError("the body is empty")


def _piece_features(piece: bytes, first: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """A piece's rows and their line numbers: numpy's C reader when every line
    is a row it can take, else the csv module's reading, which decides."""
    if piece.isascii() and b'"' not in piece and b"\r" not in piece:
        lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data"
                matrix = np.loadtxt(io.StringIO(piece.decode("ascii")), delimiter=",",
                                    dtype=np.float64, ndmin=2, comments=None)
        except ValueError:
            matrix = None
        # A blank line is skipped by numpy: then the line numbers come from the csv module.
        if (matrix is not None and matrix.shape == (lines, n_features)
                and np.isfinite(matrix).all()):
            return matrix, np.arange(first, first + lines, dtype=np.int64)
    values, numbers = array("d"), array("q")
    for row, fields in _rows_of(piece.decode("utf-8"), first):
        if len(fields) != n_features:
            raise CsvError(
                f"row {row} has {len(fields)} values, but the model expects "
                f"{n_features} features (send the features only, no label)"
            )
        values.extend([_number(v, row, col, _FEATURES_HEADER_HINT)
                       for col, v in enumerate(fields, start=1)])
        numbers.append(row)
    return (np.frombuffer(values, dtype=np.float64).reshape(len(numbers), n_features),
            np.frombuffer(numbers, dtype=np.int64))
