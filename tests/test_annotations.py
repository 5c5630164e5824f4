"""Parsing ABAW annotation files: valid files, every error class, quirks of the real data."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.data.annotations import Annotations, read_annotations
from abaw.data.labels import ANNOTATION_HEADER, parse_image_name
from abaw.errors import AbawError, FormatError

H = ANNOTATION_HEADER + "\n"
AU0 = ",".join(["0"] * 12)
AUX = ",".join(["-1"] * 12)


def line(img: str, v="0.1", a="0.2", e="3", au=AU0) -> str:
    return f"{img},{v},{a},{e},{au}\n"


def test_valid_file_masks_order_and_exact_ids(write):
    p = write("ann.txt", H
              + line("140-30-632x360/00002.jpg", "-5", "-5", "-1", AUX)
              + line("140/00010.jpg", "0.5", "-0.5", "4", "1,0,0,1,0,0,1,0,0,0,1,0")
              + line("140/00002.jpg", "-5.0", "-5.0", "7")
              + line("140/00003.jpg", "1", "-1", "-1", AUX))
    ann = read_annotations(p)
    assert ann.videos == ("140", "140-30-632x360")  # exact ids, never prefix-merged
    assert ann.images() == ["140/00002.jpg", "140/00003.jpg", "140/00010.jpg", "140-30-632x360/00002.jpg"]
    np.testing.assert_array_equal(ann.va_valid, [False, True, True, False])
    np.testing.assert_array_equal(ann.expr_valid, [True, False, True, False])
    np.testing.assert_array_equal(ann.au_valid, [True, False, True, False])
    assert ann.video_slice("140") == slice(0, 3)
    assert ann.video_slice("140-30-632x360") == slice(3, 4)
    assert ann.counts() == {"rows": 4, "videos": 2, "va": 2, "expr": 2, "au": 2, "duplicates_merged": 0}
    assert ann.line.tolist() == [4, 5, 3, 2]
    sub = ann.select_videos(["140-30-632x360"])
    assert sub.videos == ("140-30-632x360",) and len(sub) == 1 and sub.video_idx.tolist() == [0]
    with pytest.raises(AbawError):
        ann.video_slice("14")


def test_identical_duplicates_merged_and_counted(write):
    p = write("ann.txt", H + line("v/00001.jpg") + line("v/00002.jpg") + line("v/00001.jpg") + line("v/00001.jpg"))
    ann = read_annotations(p)
    assert len(ann) == 2 and ann.n_duplicates == 2


def test_conflicting_duplicates_name_both_lines(write):
    p = write("ann.txt", H + line("v/00001.jpg", e="3") + line("v/00002.jpg") + line("v/00001.jpg", e="4"))
    with pytest.raises(FormatError, match=r"ann\.txt:4: duplicate image v/00001\.jpg .* lines 2 and 4"):
        read_annotations(p)


@pytest.mark.parametrize(
    "body, lineno, message",
    [
        (line("v/00001.jpg")[:-3] + "\n", 2, "expected 16 comma-separated fields, got 15"),
        (line("../etc/00001.jpg"), 2, "bad image name"),
        (line("/abs/00001.jpg"), 2, "bad image name"),
        (line("a/b/00001.jpg"), 2, "bad image name"),
        (line("a\\b/00001.jpg"), 2, "bad image name"),
        (line("v/00001.png"), 2, "bad image name"),
        (line("v/00000.jpg"), 2, "frame number must be >= 1"),
        (line("v/00001.jpg") + line("v/00002.jpg", v="abc"), 3, "valence 'abc' is not a number"),
        (line("v/00001.jpg", a="nan"), 2, "must be finite"),
        (line("v/00001.jpg", v="1.5"), 2, "outside [-1, 1]"),
        (line("v/00001.jpg", v="-5"), 2, "invalid (-5) together"),
        (line("v/00001.jpg", e="8"), 2, "expression 8 not in -1..7"),
        (line("v/00001.jpg", e="2.5"), 2, "expression 2.5 is not an integer"),
        (line("v/00001.jpg", e="x"), 2, "expression 'x' is not a number"),
        (line("v/00001.jpg", au="0,0.5,0,0,0,0,0,0,0,0,0,0"), 2, "AU label 0.5 is not an integer"),
        (line("v/00001.jpg", au="-1,0,0,0,0,0,0,0,0,0,0,0"), 2, "must apply to all 12"),
        (line("v/00001.jpg", au="2,0,0,0,0,0,0,0,0,0,0,0"), 2, "must be 0, 1 or all -1"),
        (line("v/00001.jpg", au="x,0,0,0,0,0,0,0,0,0,0,0"), 2, "AU label 'x' is not a number"),
    ],
)
def test_each_error_names_file_and_line(write, body, lineno, message):
    p = write("bad.txt", H + body)
    with pytest.raises(FormatError) as ei:
        read_annotations(p)
    assert ei.value.line == lineno
    assert message in str(ei.value)
    assert str(ei.value).startswith(f"{p}:{lineno}: ")


def test_header_empty_missing_and_binary(write, tmp_path):
    with pytest.raises(FormatError, match=":1: expected a header"):
        read_annotations(write("a.txt", line("v/00001.jpg")))
    with pytest.raises(FormatError, match="empty file"):
        read_annotations(write("b.txt", ""))
    with pytest.raises(AbawError, match="no such file"):
        read_annotations(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00image")
    with pytest.raises(FormatError, match="not UTF-8"):
        read_annotations(tmp_path / "bin.txt")
    assert len(read_annotations(write("c.txt", H))) == 0


def test_crlf_and_blank_lines(write):
    p = write("ann.txt", (H + line("v/00001.jpg") + "\n" + line("v/00003.jpg")).replace("\n", "\r\n"))
    ann = read_annotations(p)
    assert ann.frame.tolist() == [1, 3]


def test_concat_merges_and_detects_conflicts(write):
    a = read_annotations(write("a.txt", H + line("v/00001.jpg") + line("w/00001.jpg")))
    b = read_annotations(write("b.txt", H + line("v/00001.jpg") + line("v/00002.jpg")))
    c = Annotations.concat([a, b])
    assert c.images() == ["v/00001.jpg", "v/00002.jpg", "w/00001.jpg"] and c.n_duplicates == 1
    bad = read_annotations(write("c.txt", H + line("v/00001.jpg", e="5")))
    with pytest.raises(AbawError, match="different labels"):
        Annotations.concat([a, bad])


def test_image_name_rules():
    assert parse_image_name("10-60-1280x720_right/00012.jpg") == ("10-60-1280x720_right", 12)
    for bad in ["..\\x/00001.jpg", " v/00001.jpg", "./00001.jpg", "v/1.jpeg", "v//00001.jpg", "v/0001a.jpg"]:
        assert parse_image_name(bad) is None


def test_synth_annotations_parse(tiny_synth):
    ann = read_annotations(tiny_synth / "training_set_annotations.txt")
    assert ann.n_duplicates >= 1  # the generator writes real-data quirks
    for v in ann.videos:
        fr = ann.frame[ann.video_slice(v)]
        assert (np.diff(fr) > 0).all()
