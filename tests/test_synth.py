"""The synthetic s-Aff-Wild2 generator: layout, quirks, determinism, learnable structure."""

from __future__ import annotations

import hashlib
import os

import av
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from abaw.data.annotations import read_annotations
from abaw.data.synth import (
    SynthConfig,
    generate,
    label_stats,
    load_summary,
    synth_labels,
)
from abaw.data.synth_profiles import REAL_STATS
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


def test_another_test_size_keeps_training_and_validation(tmp_path):
    """`--test-videos N` (bench_accuracy.py's bigger test splits) must not change the other splits,
    byte for byte: a search trained on them resumes on the new folder instead of refusing."""
    cfg = SynthConfig(seed=2, train_videos=3, val_videos=2, test_videos=1, videos=False)
    generate(tmp_path / "a", cfg, progress=False)
    generate(tmp_path / "b", SynthConfig(**{**cfg.__dict__, "test_videos": 7}), progress=False)
    for name in ["training_set_annotations.txt", "validation_set_annotations.txt"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert read_annotations(tmp_path / "a" / "training_set_annotations.txt").n_duplicates >= 1
    a, b = tmp_path / "a" / "cropped_aligned", tmp_path / "b" / "cropped_aligned"
    train = load_summary(tmp_path / "a")["splits"]["train"]
    for v in train:
        assert sorted(os.listdir(a / v)) == sorted(os.listdir(b / v))
        f = sorted(os.listdir(a / v))[-1]
        assert (a / v / f).read_bytes() == (b / v / f).read_bytes()
    assert len(load_summary(tmp_path / "b")["splits"]["test"]) == 7


def test_refuses_to_overwrite(tmp_path):
    cfg = SynthConfig(train_videos=1, val_videos=1, test_videos=1, min_frames=5, max_frames=5, videos=False)
    generate(tmp_path / "d", cfg, progress=False)
    with pytest.raises(AbawError, match="not empty"):
        generate(tmp_path / "d", cfg, progress=False)
    generate(tmp_path / "d", cfg, progress=False, overwrite=True)
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_labels_temporally_smooth_and_correlated(tiny_synth_dense):
    ann = read_annotations(tiny_synth_dense / "training_set_annotations.txt")
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


# The data of the original generator (profile `dense`), recorded before profiles existed:
# same seed, same bytes.
DENSE_SHA256 = {
    "training_set_annotations.txt": "a987924616729553458b7027cd380c9abb250ed3ed56202e8c3a73d254d99595",
    "validation_set_annotations.txt": "d841a2a77220242d896c19198970f0d19929e97b18baea5dcea0a46b86d13421",
    "MTL.txt": "ab57b433e285aa6fb4578b1a5deb0bb99fc6d49ca1c4f692b14a1347ecb9d5d7",
}


def test_dense_profile_unchanged(tiny_synth_dense):
    for name, sha in DENSE_SHA256.items():
        assert hashlib.sha256((tiny_synth_dense / name).read_bytes()).hexdigest() == sha, name
    st = label_stats(tiny_synth_dense / "validation_set_annotations.txt")
    assert st["gap"]["median"] == 1 and st["gap"]["share_1"] > 0.95  # every face frame labelled


def test_label_only_path_matches_generate(tiny_synth):
    labels = synth_labels(SynthConfig(**load_summary(tiny_synth)["config"]))
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        a = read_annotations(tiny_synth / f"{name}_set_annotations.txt")
        b = labels[split]
        assert a.videos == b.videos and np.array_equal(a.frame, b.frame) and np.array_equal(a.expr, b.expr)
        assert np.array_equal(a.au, b.au) and np.allclose(a.va, b.va, atol=1e-4)


def _pooled(cfg):
    from abaw.data.annotations import Annotations

    return label_stats(Annotations.concat(list(synth_labels(cfg).values())))


@pytest.mark.parametrize("seed", [0, 1])
def test_s_aff_wild2_profile_matches_real_statistics(seed):
    real = REAL_STATS

    def sized(lo, hi):
        return _pooled(SynthConfig(seed=seed, train_videos=1, val_videos=48, test_videos=1, min_frames=lo,
                                   max_frames=hi, videos=False))

    big, small = sized(11, 4218), sized(2, 422)  # the real size (50 videos) and one ten times smaller
    for st, tol in ((big, 1.0), (small, 2.0)):
        g = st["gap"]
        assert 3 <= g["median"] <= 5 and abs(g["mean"] - real["gap"]["mean"]) < 0.6 * tol
        assert abs(g["p90"] - real["gap"]["p90"]) <= 1.5 * tol and abs(g["share_1"] - 0.186) < 0.015 * tol
        assert np.abs(np.subtract(st["au_rates"], real["au_rates"])).max() < 0.03 * tol
        assert 0.5 * np.abs(np.subtract(st["expr_share"], real["expr_share"])).sum() < 0.075 * tol  # total variation
        assert st["valid"]["va"] > 0.98 and st["valid"]["au"] > 0.98
        assert abs(st["valid"]["expr"] - real["valid"]["expr"]) < 0.07 * tol
        f = st["frames_per_video"]  # the real shape: median ~1/11 of the longest, a long left tail
        assert 6 < f["max"] / f["median"] < 20 and f["median"] / f["min"] > 5
    assert 300 <= big["gap"]["max"] <= 600 and big["rows"] > 20_000
    f = big["frames_per_video"]
    assert f["min"] < 40 and 250 < f["median"] < 500 and f["max"] == 4218
    assert 4 <= big["expr_runs"]["median"] <= 6 and 10 <= big["expr_runs"]["mean"] <= 16


def test_default_size_keeps_the_shape():
    st = _pooled(SynthConfig(videos=False))
    assert 3 <= st["gap"]["median"] <= 5 and 6 < st["gap"]["mean"] < 11 and 13 <= st["gap"]["p90"] <= 21
    f = st["frames_per_video"]
    assert f["min"] <= 5 and f["max"] >= 4 * f["median"]


def test_sparse_labels_smooth_in_video_time():
    """Labels of frames t and t+gap correlate according to the gap (not the row distance)."""
    ann = synth_labels(SynthConfig(seed=3, train_videos=1, val_videos=6, test_videos=1, min_frames=300,
                                   max_frames=1000, videos=False))["val"]
    same = ann.video_idx[1:] == ann.video_idx[:-1]
    gap = np.diff(ann.frame)
    dv = np.abs(np.diff(ann.va[:, 0]))
    au = ann.au[1:] != ann.au[:-1]
    near, far = same & (gap == 1), same & (gap >= 17)
    assert dv[near].mean() < 0.5 * dv[far].mean()
    assert au[near].mean() < 0.5 * au[far].mean()


def test_sparse_layout_crops_and_videos(tmp_path, tiny_synth_videos):
    cfg = SynthConfig(seed=4, train_videos=2, val_videos=1, test_videos=1, min_frames=4, max_frames=10, videos=False)
    generate(tmp_path / "some", cfg, progress=False)
    generate(tmp_path / "all", SynthConfig(**{**cfg.__dict__, "all_crops": True}), progress=False)
    ann = read_annotations(tmp_path / "some" / "training_set_annotations.txt")
    for v in ann.videos:
        some = sorted(os.listdir(tmp_path / "some" / "cropped_aligned" / v))
        every = sorted(os.listdir(tmp_path / "all" / "cropped_aligned" / v))
        assert some == [f"{f:05d}.jpg" for f in ann.frame[ann.video_slice(v)]]  # only the labelled frames
        assert set(some) < set(every) and len(every) > 3 * len(some)  # ... or every face frame
        for name in some:  # a labelled frame's crop does not depend on what else was drawn
            assert (tmp_path / "some" / "cropped_aligned" / v / name).read_bytes() == \
                (tmp_path / "all" / "cropped_aligned" / v / name).read_bytes()
    # the videos hold every frame, the annotations only the sparse labelled ones
    s = load_summary(tiny_synth_videos)
    rows = sum(s["rows"][k] for k in ("train", "val", "test"))
    assert s["video_frames"] > 3 * rows and s["stats"]["all"]["gap"]["median"] > 1


def test_unknown_profile_is_an_error(tmp_path):
    with pytest.raises(AbawError, match="unknown synth profile 'nope'; known: dense, s-aff-wild2"):
        generate(tmp_path / "x", SynthConfig(profile="nope", videos=False), progress=False)


def test_cli_synth_prints_statistics(tmp_path):
    from abaw.cli import main

    res = CliRunner().invoke(main, ["synth", str(tmp_path / "d"), "--train-videos", "2", "--val-videos", "1",
                                    "--test-videos", "1", "--max-frames", "8", "--no-videos", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "profile s-aff-wild2" in res.output and "gap between labelled frames: median" in res.output
    assert "(18.6%)" in res.output  # the real values alongside
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "e"), "--profile", "dense", "--train-videos", "1",
                                    "--val-videos", "1", "--test-videos", "1", "--max-frames", "8",
                                    "--min-frames", "5", "--no-videos", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "profile dense" in res.output


def test_many_clips_never_share_an_id_across_splits():
    """A random clip id of one split never equals another split's fixed (quirk) id (was: `video10_1`
    in train and val with 450 training tracks)."""
    import numpy as np

    from abaw.data.synth import SynthConfig, _make_clips

    for seed in range(3):
        clips = _make_clips(SynthConfig(train_videos=450, val_videos=100, test_videos=150, seed=seed),
                            np.random.default_rng(seed))
        ids = [c for c, _, _ in clips]
        assert len(ids) == len(set(ids))
