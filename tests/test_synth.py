"""The synthetic s-Aff-Wild2 generator: layout, quirks, determinism, learnable structure."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
from PIL import Image

from abaw.data.annotations import read_annotations
from abaw.data.synth import SynthConfig, generate, load_summary
from abaw.data.testlist import read_test_list
from abaw.errors import AbawError


def test_layout_and_quirks(tiny_synth):
    s = load_summary(tiny_synth)
    train = read_annotations(tiny_synth / "training_set_annotations.txt")
    val = read_annotations(tiny_synth / "validation_set_annotations.txt")
    test_ann = read_annotations(tiny_synth / "test_set_annotations.txt")
    # ids with real-data quirks, exact and disjoint across splits
    assert {"10-60-1280x720_left", "10-60-1280x720_right"} <= set(train.videos)
    assert {"140", "140-30-632x360"} <= set(train.videos) or "140" in train.videos
    assert not set(train.videos) & set(val.videos) and not set(val.videos) & set(test_ann.videos)
    assert train.n_duplicates >= 1
    # val like the real one: VA and AU complete, EXPR partial allowed
    assert val.va_valid.all() and val.au_valid.all() and val.expr_valid.any()
    # every task has valid training frames
    assert train.va_valid.any() and train.expr_valid.any() and train.au_valid.any()
    # every annotated frame has its 112x112 crop; crops and annotations agree
    for v in train.videos:
        files = sorted(os.listdir(tiny_synth / "cropped_aligned" / v))
        frames = train.frame[train.video_slice(v)]
        assert files == [f"{f:05d}.jpg" for f in frames]
    img = Image.open(tiny_synth / "cropped_aligned" / train.images()[0])
    assert img.size == (112, 112) and img.mode == "RGB"
    # ABAW7 test list: trailing commas, covers exactly the test crops (with repeats)
    tl = read_test_list(tiny_synth / "MTL.txt")
    assert tl.trailing_comma
    assert {k for k in tl.unique_keys()} == {(v, int(f)) for v, f in zip(test_ann.video_of_rows(), test_ann.frame)}
    assert s["rows"]["test_list"] == len(tl)


def test_deterministic_for_a_seed(tmp_path):
    cfg = SynthConfig(seed=5, train_videos=2, val_videos=1, test_videos=1, min_frames=10, max_frames=14, videos=False)
    generate(tmp_path / "a", cfg, progress=False)
    generate(tmp_path / "b", cfg, jobs=2, progress=False)  # parallel gives the same bytes
    for name in ["training_set_annotations.txt", "validation_set_annotations.txt", "MTL.txt"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = tmp_path / "a" / "cropped_aligned"
    v = sorted(os.listdir(a))[0]
    f = sorted(os.listdir(a / v))[0]
    assert (a / v / f).read_bytes() == (tmp_path / "b" / "cropped_aligned" / v / f).read_bytes()
    generate(tmp_path / "c", SynthConfig(**{**cfg.__dict__, "seed": 6}), progress=False)
    assert (tmp_path / "a" / "MTL.txt").read_bytes() != (tmp_path / "c" / "MTL.txt").read_bytes() or \
        (tmp_path / "a" / "training_set_annotations.txt").read_bytes() != \
        (tmp_path / "c" / "training_set_annotations.txt").read_bytes()


def test_refuses_to_overwrite(tmp_path):
    cfg = SynthConfig(train_videos=1, val_videos=1, test_videos=1, min_frames=5, max_frames=5, videos=False)
    generate(tmp_path / "d", cfg, progress=False)
    with pytest.raises(AbawError, match="not empty"):
        generate(tmp_path / "d", cfg, progress=False)
    generate(tmp_path / "d", cfg, progress=False, overwrite=True)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_labels_temporally_smooth_and_correlated(tiny_synth):
    ann = read_annotations(tiny_synth / "training_set_annotations.txt")
    m = ann.va_valid
    dv = np.abs(np.diff(ann.va[:, 0]))[(np.diff(ann.frame) == 1) & m[1:] & m[:-1]]
    assert np.median(dv) < 0.05  # VA drifts slowly
    e = ann.expr[ann.expr_valid]
    assert (e[1:] == e[:-1]).mean() > 0.9  # expressions hold for runs
    # AU12 (lip corner puller) goes with Happiness
    ok = ann.expr_valid & ann.au_valid
    happy = ann.expr[ok] == 4
    if happy.any() and (~happy).any():
        assert ann.au[ok][happy, 6].mean() > ann.au[ok][~happy, 6].mean()


def test_videos_match_crops(tiny_synth_videos):
    s = load_summary(tiny_synth_videos)
    for clip in s["clips"]:
        with av.open(str(tiny_synth_videos / "videos" / f"{clip['clip']}.mp4")) as c:
            n = sum(1 for _ in c.decode(video=0))
        ids = [clip["clip"]] if clip["people"] == 1 else [f"{clip['clip']}_left", f"{clip['clip']}_right"]
        for vid in ids:
            frames = [int(f[:5]) for f in os.listdir(tiny_synth_videos / "cropped_aligned" / vid)]
            assert max(frames) <= n  # crops are frames of the video; gaps where the face is lost
