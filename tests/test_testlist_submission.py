"""Test lists (ABAW7 and ABAW4 forms) and submission writing / validation."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.data.submission import read_predictions, validate_submission, write_submission
from abaw.data.testlist import read_test_list
from abaw.errors import AbawError, FormatError

HDR = "image,valence,arousal,expression,aus\n"


def test_abaw7_and_abaw4_lists_keep_order_and_repeats(write):
    t7 = read_test_list(write("mtl7.txt", HDR + "video45_1/00002.jpg,\nvideo45_1/00001.jpg,\nvideo45_1/00001.jpg,\n"))
    assert t7.trailing_comma and len(t7) == 3
    assert t7.images == ("video45_1/00002.jpg", "video45_1/00001.jpg", "video45_1/00001.jpg")
    assert t7.unique_keys() == [("video45_1", 2), ("video45_1", 1)]
    t4 = read_test_list(write("mtl4.txt", HDR + "341/00001.jpg\r\n341/00002.jpg\r\n"))
    assert not t4.trailing_comma and t4.frame.tolist() == [1, 2] and t4.videos == ("341",)


@pytest.mark.parametrize("body, message", [
    ("v/00001.jpg,0.1\n", "expected one image name per line"),
    ("../v/00001.jpg,\n", "bad image name"),
    ("v/00000.jpg,\n", "frame number must be >= 1"),
])
def test_bad_test_lists(write, body, message):
    with pytest.raises(FormatError, match=rf":2: {message}"):
        read_test_list(write("mtl.txt", HDR + body))
    with pytest.raises(FormatError, match=":1: expected a header"):
        read_test_list(write("nohdr.txt", body))


@pytest.fixture
def tl(write):
    return read_test_list(write("mtl.txt", HDR + "a/00001.jpg,\na/00002.jpg,\na/00002.jpg,\nb/00001.jpg,\n"))


def test_writer_roundtrip_clips_and_validates(tmp_path, tl):
    va = np.array([[1.7, -0.2], [0.1, 0.2], [0.1, 0.2], [-3, 0]])
    expr = np.array([0, 7, 7, 3])
    au = np.zeros((4, 12))
    au[0, 3] = 0.9
    out = tmp_path / "sub.txt"
    write_submission(out, tl.images, va, expr, au)
    text = out.read_text().splitlines()
    assert text[0] == "image,valence,arousal,expression,aus"
    assert text[1] == "a/00001.jpg,1.000000,-0.200000,0,0,0,0,1,0,0,0,0,0,0,0,0"
    assert validate_submission(out, tl) == []
    pred = read_predictions(out)  # repeated image merged
    assert pred.images == ("a/00001.jpg", "a/00002.jpg", "b/00001.jpg")
    assert pred.va[2].tolist() == [-1.0, 0.0]


def test_writer_rejects_bad_arrays(tmp_path, tl):
    with pytest.raises(AbawError, match="do not match"):
        write_submission(tmp_path / "s.txt", tl.images, np.zeros((3, 2)), np.zeros(4, int), np.zeros((4, 12)))
    with pytest.raises(AbawError, match="NaN"):
        write_submission(tmp_path / "s.txt", tl.images, np.full((4, 2), np.nan), np.zeros(4, int), np.zeros((4, 12)))
    with pytest.raises(AbawError, match="0..7"):
        write_submission(tmp_path / "s.txt", tl.images, np.zeros((4, 2)), np.full(4, 8), np.zeros((4, 12)))
    assert not (tmp_path / "s.txt").exists()


def test_validator_reports_each_problem_class(write, tl):
    rows = [
        "a/00002.jpg,0.1,0.1,0,0,0,0,0,0,0,0,0,0,0,0,0",  # order
        "a/00002.jpg,nan,0.1,0,0,0,0,0,0,0,0,0,0,0,0,0",  # NaN
        "a/00002.jpg,1.5,0.1,9,0,0,0,0,0,0,0,0,0,0,0,2",  # range, expr, AU
        "b/00001.jpg,0.1,0.1,x,0,0,0,0,0,0,0,0,0,0,0",  # fields
        "b/00001.jpg,0.1,0.1,1,0,0,0,0,0,0,0,0,0,0,0,0",  # extra row
    ]
    problems = validate_submission(write("s.txt", "image,v,a,e,aus\n" + "\n".join(rows) + "\n"), tl)
    text = "\n".join(problems)
    for expected in ["header is", "5 rows, but the test list has 4", "test list order", "NaN",
                     "outside [-1, 1]", "expression outside 0..7", "AU values other than 0/1",
                     "rows without 16 comma-separated fields"]:
        assert expected in text, expected
    assert len(problems) == 8


def test_read_predictions_errors(write):
    with pytest.raises(FormatError, match=":3: image a/00001.jpg predicted differently on lines 2 and 3"):
        read_predictions(write("p.txt", HDR + "a/00001.jpg,0,0,0," + ",".join("0" * 12) + "\n"
                               + "a/00001.jpg,0,0,1," + ",".join("0" * 12) + "\n"))
    with pytest.raises(FormatError, match=":2: expression 9"):
        read_predictions(write("q.txt", HDR + "a/00001.jpg,0,0,9," + ",".join("0" * 12) + "\n"))
