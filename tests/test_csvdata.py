import io

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import csvdata
from chalicelib.csvdata import CsvError, parse_features, parse_training
from tests.conftest import IRIS


def test_iris_parses_with_string_labels():
    data = parse_training(IRIS)
    assert data.features.shape == (150, 4)
    assert data.classes == ["setosa", "versicolor", "virginica"]
    assert data.labels[0] == "setosa"


@pytest.mark.parametrize("body, classes", [
    (b"1,0\n2,1\n3,0\n", [0, 1]),
    (b"1,1.0\n2,2.0\n", [1.0, 2.0]),
    (b"1,0.5\n2,1.5\n", ["0.5", "1.5"]),
    (b"1,1\n2,b\n", ["1", "b"]),
])
def test_labels_keep_their_type(body, classes):
    assert parse_training(body).classes == classes
    assert [type(c) for c in parse_training(body).classes] == [type(c) for c in classes]


def test_bom_crlf_quotes_and_blank_lines_are_accepted():
    body = '\ufeff1,2,"a"\r\n\r\n3,4,b\r\n'.encode()
    data = parse_training(body)
    np.testing.assert_array_equal(data.features, [[1, 2], [3, 4]])
    assert data.labels.tolist() == ["a", "b"]


@pytest.mark.parametrize("body, reason", [
    (b"", "the body is empty"),
    (b"\n \n", "the body is empty"),
    (b"1,2,a\n3,4,b\n5,6\n", "row 3 has 2 values, expected 3"),
    (b"1,a\n", "all 1 rows have the label 'a'; training needs at least 2 classes"),
    (b"1,x,a\n2,3,b\n", "row 1, column 2: 'x' is not a number (a header row? send ?header=true)"),
    (b"1,2,a\n2,x,b\n", "row 2, column 2: 'x' is not a number"),
    (b"1,2,a\n2,,b\n", "row 2, column 2: the value is missing"),
    (b"1,2,a\n2,nan,b\n", "row 2, column 2: 'nan' is not a finite number"),
    (b"1,2,a\n2,inf,b\n", "row 2, column 2: 'inf' is not a finite number"),
    (b"1,2,a\n2,1e999,b\n", "row 2, column 2: '1e999' is not a finite number"),
    (b"1,2,a\n2,3, \n", "row 2, column 3: the label is missing"),
    (b"a\nb\n", "row 1 has 1 value; expected at least one feature and the label"),
    (b"1,2,\xff\n", "the body is not UTF-8 text (byte 4 is invalid)"),
    (b'1,2,"a\n', "row 1: unexpected end of data"),
    (b"1,2,a\x00\n", "the body contains a NUL byte; it is not CSV text"),
])
def test_bad_training_data_is_rejected_with_the_reason(body, reason):
    with pytest.raises(CsvError) as error:
        parse_training(body)
    assert str(error.value) == reason


def test_feature_rows():
    np.testing.assert_array_equal(parse_features(b"1,2\n3,4\n", 2), [[1, 2], [3, 4]])


@pytest.mark.parametrize("body, reason", [
    (b"", "the body is empty"),
    (b"1,2,3\n", "row 1 has 3 values, but the model expects 2 features (send the features only, no label)"),
    (b"1,2\n1,b\n", "row 2, column 2: 'b' is not a number"),
])
def test_bad_feature_rows(body, reason):
    with pytest.raises(CsvError) as error:
        parse_features(body, 2)
    assert str(error.value) == reason


def test_labels_beyond_int64_stay_text():
    data = parse_training(b"1,99999999999999999999\n2,1\n")
    assert data.classes == ["1", "99999999999999999999"]


def test_values_whose_variance_overflows_are_rejected():
    with pytest.raises(CsvError, match=r"^column 2: the values are too large to scale"):
        parse_training(b"1,1e308,a\n2,-1e308,b\n")


def test_whole_float_labels_beyond_int64_stay_text():
    assert parse_training(b"1,1e20\n2,2e20\n").classes == ["1e20", "2e20"]


def test_labels_too_long_for_the_status_item_are_rejected():
    body = b"".join(b"%d,%s\n" % (i, bytes([97 + i]) * 30_000) for i in range(4))
    with pytest.raises(CsvError, match=r"^the 4 class labels take 120,\d+ bytes as JSON; "
                                       r"at most 100,000 fit"):
        parse_training(body)


# --- pieces, the fast reader and the precise one ------------------------------------

def _outcome(body: bytes, header: bool):
    try:
        data = parse_training(body, header)
    except CsvError as error:
        return "error", str(error)
    return ("data", data.features.tolist(), data.labels.tolist(),
            [(type(c), c) for c in data.classes], data.feature_names)


_FIELDS = st.sampled_from(["1", "2.5", "-3e2", "0.125", " 7 ", "1_0", "", " ", "x", "nan",
                           "inf", '"4"', '"a\nb"', '"a""b"', "a", "b", " c ", "01", "1.0",
                           "\u00e9", "\t", '"', "\r", "\u00a0", "1e999"])
_GOOD = st.sampled_from(["1", "2.5", "-3e2", "0.125", "7", "1e-3"])
_LABELS = st.sampled_from(["a", "b", "1", "2", '"q, r"', " c", "\u00e9t\u00e9", "1.0"])


@st.composite
def _bodies(draw):
    width = draw(st.integers(2, 4))
    lines = []
    for _ in range(draw(st.integers(0, 60))):
        if draw(st.integers(0, 30)) == 0:  # now and then, anything at all
            lines.append(",".join(draw(st.lists(_FIELDS, min_size=1, max_size=width + 1))))
        else:
            lines.append(",".join([draw(_GOOD) for _ in range(width - 1)] + [draw(_LABELS)]))
    end = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    text = end.join(lines) + draw(st.sampled_from(["", end]))
    header = draw(st.booleans())
    if header:
        text = ",".join(f"f{column}" for column in range(width)) + end + text
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode(), header


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(_bodies(), st.sampled_from([7, 64, 1000]))
def test_pieces_and_the_fast_reader_agree_with_the_precise_reader(monkeypatch_module, case,
                                                                  piece_bytes):
    """Any body, cut in pieces of a few bytes and read by numpy where it can,
    gives what the csv module alone gives reading it whole: the same numbers,
    labels and classes, or the same error naming the same row and column."""
    body, header = case
    with monkeypatch_module.context() as patch:
        patch.setattr(csvdata, "CHUNK_BYTES", 1 << 30)
        patch.setattr(csvdata._TrainingBuilder, "_fast", lambda self, data: None)
        precise = _outcome(body, header)
    with monkeypatch_module.context() as patch:
        patch.setattr(csvdata, "CHUNK_BYTES", piece_bytes)
        patch.setattr(csvdata, "MAX_RECORD_BYTES", 1 << 30)
        assert _outcome(body, header) == precise


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_stream_is_read_in_pieces(monkeypatch):
    monkeypatch.setattr(csvdata, "CHUNK_BYTES", 100)
    body = b"a,b,label\n" + b"".join(b"%d,%d.5,%s\n" % (i, i % 7, b"xy"[i % 2:i % 2 + 1])
                                     for i in range(500))
    reads = []
    stream = io.BytesIO(body)
    real_read = stream.read
    stream.read = lambda n: reads.append(n) or real_read(n)
    data = parse_training(stream, header=True, size=len(body))
    assert len(reads) > 40 and set(reads) == {100}  # never the whole body at once
    assert data.n_rows == 500 and data.feature_names == ["a", "b"]
    np.testing.assert_array_equal(data.features[499], [499, 2.5])
    assert data.classes == ["x", "y"] and data.codes.dtype.kind == "i"


def test_an_error_in_a_later_piece_names_its_row(monkeypatch):
    monkeypatch.setattr(csvdata, "CHUNK_BYTES", 64)
    body = b"".join(b"%d,1,a\n%d,2,b\n" % (i, i) for i in range(50)) + b"1,oops,a\n"
    with pytest.raises(CsvError) as error:
        parse_training(body)
    assert str(error.value) == "row 101, column 2: 'oops' is not a number"


def test_too_many_classes_are_refused():
    body = b"".join(b"%d,class%d\n" % (i, i) for i in range(csvdata.MAX_CLASSES + 1))
    with pytest.raises(CsvError) as error:
        parse_training(body)
    assert str(error.value) == "the labels name more than 1,000 classes; a model can have at most 1,000"
    assert parse_training(body[:body.index(b"1000,class1000")]).classes[-1] == "class999"


def test_reading_stops_at_the_rows_the_memory_can_train(monkeypatch):
    monkeypatch.setattr(csvdata, "CHUNK_BYTES", 1000)
    body = b"".join(b"%d,%d,a\n%d,%d,b\n" % (i, i, i, -i) for i in range(5000))
    with pytest.raises(csvdata.DatasetTooLarge) as error:
        parse_training(body, max_rows=lambda columns: 1000 if columns == 3 else 0)
    assert str(error.value).startswith("the data has more than 1,000 rows of 2 features (")
    assert "more than the trainer's memory can train" in str(error.value)


def test_an_unclosed_quote_costs_one_pass_per_piece(monkeypatch):
    """Finding where the last record of a piece ends is linear: a quote never
    closed over thousands of lines is an error, found in a blink."""
    import time

    monkeypatch.setattr(csvdata, "CHUNK_BYTES", 1 << 20)
    monkeypatch.setattr(csvdata, "MAX_RECORD_BYTES", 1 << 30)
    body = b'1,"a\n' + b"2,b\n" * 1_000_000
    started = time.perf_counter()
    with pytest.raises(CsvError, match=r"^row \d+: (unexpected end of data|field larger)"):
        parse_training(body)
    # Not a speed target: a guard against scanning the piece again per line
    # (quadratic: hours here), with a bound far above the linear seconds.
    assert time.perf_counter() - started < 60


# --- stream_features: batch predictions' reader -------------------------------------

from chalicelib import csvdata as _csvdata  # noqa: E402  (the module, to patch)


@pytest.mark.parametrize("body", [
    b"1,2\n3,x\n", b"1,2\n3\n", b"1,2\n\n3,\n", b'1,2\n"3,4\n', b"1,2\n1e999,2\n",
    b"\xff\xfe1,2\n", b"1,2\x00\n", b"", b"\n \n", b"1,2\n3,4,5\n", b"a,b\n1,2\n"])
def test_stream_features_refuses_what_parse_features_refuses_with_the_same_words(body):
    with pytest.raises(CsvError) as whole:
        parse_features(body, 2)
    with pytest.raises(CsvError) as streamed:
        list(_csvdata.stream_features(body, 2))
    assert str(streamed.value) == str(whole.value)


def test_stream_features_numbers_rows_by_line_and_resumes_at_a_piece(monkeypatch):
    monkeypatch.setattr(_csvdata, "CHUNK_BYTES", 64)
    lines = [f"{i}.5,{i * 2}\n" if i % 7 else "\n" for i in range(1, 200)]
    lines[10] = '"11.5",22\n'  # quoted: that piece goes through the csv module
    body = "".join(lines).encode()
    chunks = list(_csvdata.stream_features(body, 2))
    assert len(chunks) > 5
    rows = np.concatenate([chunk.rows for chunk in chunks])
    assert rows.tolist() == [i for i in range(1, 200) if i % 7]
    features = np.concatenate([chunk.features for chunk in chunks])
    assert np.array_equal(features, parse_features(body, 2))
    # Resumed where the third piece starts: the same rows, numbered alike.
    start = chunks[1]
    resumed = list(_csvdata.stream_features(body[start.end:], 2, line=start.next_line,
                                            offset=start.end))
    assert np.concatenate([c.rows for c in resumed]).tolist() == \
        np.concatenate([c.rows for c in chunks[2:]]).tolist()
    assert [c.end for c in resumed] == [c.end for c in chunks[2:]]
