import numpy as np
import pytest

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
