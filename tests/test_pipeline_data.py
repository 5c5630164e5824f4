"""Label/feature alignment, segments and windows, batches, outputs and post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.cache.store import FeatureStore, FeatureTable, load_features
from abaw.data.annotations import Annotations
from abaw.errors import AbawError
from abaw.pipeline.train.dataset import (
    Batcher,
    align_labels,
    eval_windows,
    frames_for_prediction,
    split_segments,
    train_windows,
)
from abaw.pipeline.train.outputs import FrameOutputs, align_annotations, decide, mean_outputs
from abaw.pipeline.train.postprocess import (
    PostProcess,
    apply_postprocess,
    fit_au_thresholds,
    fit_postprocess,
    score_against,
    smooth_series,
    to_predictions,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FP = {"spec": "x:y", "dim": 3, "preprocess": {}, "weights_sha256": "aa"}


def _table(videos: dict[str, tuple[list[int], list[bool]]]) -> FeatureTable:
    """A table whose feature row encodes (video number, frame) so alignment can be checked."""
    vidx, frames, faces, feats = [], [], [], []
    for i, (v, (fr, face)) in enumerate(videos.items()):
        vidx += [i] * len(fr)
        frames += fr
        faces += face
        feats += [[i, f, 0] for f in fr]
    return FeatureTable(keys=("k",), videos=tuple(videos), video_idx=np.array(vidx, np.int32),
                        frame=np.array(frames, np.int32), face=np.array(faces, bool),
                        timestamp=np.zeros(len(frames)), feats={"k": np.array(feats, np.float16)},
                        fingerprints={"k": FP})


def _ann(rows: list[tuple[str, int]], expr=None) -> Annotations:
    videos = tuple(sorted({v for v, _ in rows}))
    rows = sorted(rows, key=lambda r: (videos.index(r[0]), r[1]))
    n = len(rows)
    expr = np.arange(n) % 8 if expr is None else np.asarray(expr)
    return Annotations(videos=videos, video_idx=np.array([videos.index(v) for v, _ in rows], np.int32),
                       frame=np.array([f for _, f in rows], np.int32),
                       va=np.tile(np.float32([0.1, -0.2]), (n, 1)), expr=expr.astype(np.int64),
                       au=np.zeros((n, 12), np.int8))


def test_alignment_uses_exact_video_and_frame_keys():
    # cache order differs from annotation order; '140' must not match '140-30-632x360'
    t = _table({"140-30-632x360": ([1, 2, 3], [True] * 3), "140": ([2, 3, 4], [True] * 3)})
    ann = _ann([("140", 2), ("140", 4), ("140-30-632x360", 1), ("140-30-632x360", 3)])
    fs = align_labels(t, ann)
    feats = t.feats["k"][fs.rows].astype(int)
    vids = [t.videos[i] for i in feats[:, 0]]
    assert list(zip(vids, feats[:, 1].tolist())) == list(zip([t.videos[v] for v in fs.video_idx], fs.frame.tolist()))
    got = sorted(zip(vids, feats[:, 1].tolist(), fs.labels.expr.tolist()))
    want = sorted(zip([ann.videos[v] for v in ann.video_idx], ann.frame.tolist(), ann.expr.tolist()))
    assert got == want
    assert fs.missing is None and len(fs.segments) == 2


def test_missing_frames_error_or_skip():
    t = _table({"a": ([1, 2, 3, 4], [True, True, False, True])})
    ann = _ann([("a", 1), ("a", 3), ("a", 9), ("b", 1), ("a", 4)])
    with pytest.raises(AbawError, match=r"3 of 5 labelled frames have no cached feature \(1 in videos missing "
                                        r"from the cache, 1 frames not cached, 1 without a face\), e\.g\. a/00003\.jpg"):
        align_labels(t, ann)
    fs = align_labels(t, ann, allow_missing=True)
    assert fs.frame.tolist() == [1, 4] and fs.missing.missing == 3 and fs.missing.no_face == 1
    assert "b/00001.jpg" in fs.missing.examples


def test_segments_split_at_videos_and_long_gaps():
    vidx = np.array([0, 0, 0, 0, 1, 1])
    fr = np.array([1, 2, 5, 40, 1, 2])
    assert split_segments(vidx, fr, max_gap=2).tolist() == [[0, 3], [3, 4], [4, 6]]  # 2 missing: kept
    assert split_segments(vidx, fr, max_gap=1).tolist() == [[0, 2], [2, 3], [3, 4], [4, 6]]
    assert split_segments(vidx, fr, max_gap=30).tolist() == [[0, 3], [3, 4], [4, 6]]
    assert split_segments(vidx, fr, max_gap=None).tolist() == [[0, 4], [4, 6]]


def test_eval_windows_cover_every_frame_once_with_padding():
    segs = np.array([[0, 70], [70, 75], [75, 139]])
    w = eval_windows(segs, 32)
    valid = w[w >= 0]
    assert sorted(valid.tolist()) == list(range(139))  # every frame exactly once
    for row in w:  # a window stays inside one segment and pads only at its end
        r = row[row >= 0]
        seg = np.searchsorted(segs[:, 1], r, side="right")
        assert len(set(seg.tolist())) == 1
        assert (row[: len(r)] >= 0).all() and (row[len(r):] == -1).all()
        assert (np.diff(r) == 1).all()
    assert (w == -1).sum() == (3 * 32 - 70) + (32 - 5) + (2 * 32 - 64)


def test_train_windows_stay_in_segments_and_cover_all():
    segs = np.array([[0, 100], [100, 110], [110, 150]])
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = train_windows(segs, 16, 8, rng)
        covered = set(w[w >= 0].tolist())
        assert covered == set(range(150))
        for row in w:
            r = row[row >= 0]
            seg = np.searchsorted(segs[:, 1], r, side="right")
            assert len(set(seg.tolist())) == 1 and (np.diff(r) == 1).all()
        assert ((w >= 0).sum(1) < 16).sum() == 1  # only the 10-frame segment is padded


def test_batcher_gathers_features_and_masks_labels():
    t = _table({"v": ([1, 2, 3, 4, 5], [True] * 5)})
    ann = _ann([("v", f) for f in (1, 2, 3, 4, 5)], expr=[0, -1, 2, 3, 4])
    fs = align_labels(t, ann)
    b = Batcher(fs, ("k",))(np.array([[0, 1, 2], [3, 4, -1]]))
    assert b["feats"][0].shape == (2, 3, 3) and b["feats"][0].dtype.is_floating_point
    assert b["feats"][0][1, 1, 1].item() == 5.0  # frame 5
    assert b["mask"].tolist() == [[True, True, True], [True, True, False]]
    assert b["expr_valid"].tolist() == [[True, False, True], [True, True, False]]
    assert not b["au_valid"][1, 2]


def test_frames_for_prediction_defaults_to_face_frames():
    t = _table({"v": ([1, 2, 3], [True, False, True]), "w": ([7], [True])})
    fs = frames_for_prediction(t)
    assert fs.rows.tolist() == [0, 2, 3] and fs.labels is None


def _outputs(n_per_video=(50, 40), seed=0) -> tuple[FrameOutputs, np.ndarray]:
    rng = np.random.default_rng(seed)
    vidx = np.concatenate([np.full(n, i) for i, n in enumerate(n_per_video)]).astype(np.int32)
    frame = np.concatenate([np.arange(1, n + 1) for n in n_per_video]).astype(np.int32)
    n = len(frame)
    p = rng.random((n, 8)).astype(np.float32)
    out = FrameOutputs(videos=tuple(f"v{i}" for i in range(len(n_per_video))), video_idx=vidx, frame=frame,
                       va=rng.uniform(-1, 1, (n, 2)).astype(np.float32), expr=p / p.sum(1, keepdims=True),
                       au=rng.random((n, 12)).astype(np.float32))
    return out, rng


def test_smoothing_stays_within_each_video_and_respects_gaps():
    vidx = np.array([0, 0, 0, 1, 1])
    frame = np.array([1, 2, 10, 3, 4])
    x = np.array([[0.0], [2.0], [100.0], [10.0], [20.0]])
    s = smooth_series(x, vidx, frame, 3)  # +-1 frame
    assert s[:, 0].tolist() == [1.0, 1.0, 100.0, 15.0, 15.0]
    assert np.array_equal(smooth_series(x, vidx, frame, 1), x)


def test_thresholds_and_postprocess_fit():
    out, rng = _outputs()
    n = len(out)
    from abaw.pipeline.train.dataset import Labels

    # AU k is active when its probability exceeds 0.2 + 0.05 k (thresholds recoverable)
    thr_true = 0.2 + 0.05 * np.arange(12)
    au = (out.au > thr_true).astype(np.int8)
    thr = fit_au_thresholds(out.au, au)
    assert np.all(np.abs(thr - thr_true) <= 0.05 + 1e-9)
    labels = Labels(va=out.va.copy(), expr=out.expr.argmax(1), au=au, va_valid=np.ones(n, bool),
                    expr_valid=np.ones(n, bool), au_valid=np.ones(n, bool))
    pp, steps = fit_postprocess(out, labels)
    assert [s["step"] for s in steps] == ["raw", "au_thresholds", "smoothing"]
    assert steps[1]["au"] > steps[0]["au"] and steps[1]["va"] == pytest.approx(1.0)
    # the labels are the raw outputs: no smoothing helps, window 1 is kept
    assert (pp.smooth_va, pp.smooth_expr) == (1, 1)
    va, expr, au_bin = decide(apply_postprocess(out, pp), pp.au_thresholds)
    assert au_bin.dtype == np.int8 and expr.tolist() == labels.expr.tolist()
    preds = to_predictions(out, pp)
    assert preds.images[0] == "v0/00001.jpg" and preds.au.shape == (n, 12)


def test_smoothing_is_chosen_when_labels_are_smooth():
    out, rng = _outputs((200, 150), seed=1)
    from abaw.pipeline.train.dataset import Labels

    n = len(out)
    clean = np.repeat(rng.uniform(-0.8, 0.8, (n // 25 + 1, 2)), 25, axis=0)[:n].astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.5, clean.shape), -1, 1).astype(np.float32)
    out = out.with_values(va=noisy)
    labels = Labels(va=clean, expr=np.zeros(n, np.int64), au=np.zeros((n, 12), np.int8),
                    va_valid=np.ones(n, bool), expr_valid=np.zeros(n, bool), au_valid=np.zeros(n, bool))
    pp, steps = fit_postprocess(out, labels, windows=(1, 5, 9, 15))
    assert pp.smooth_va > 1 and steps[-1]["va"] > steps[0]["va"] + 0.1
    assert pp.au_thresholds is None  # no valid AU label: nothing to fit


def test_outputs_save_load_mean_and_score(tmp_path):
    out, _ = _outputs()
    out.save(tmp_path / "o.npz")
    back = FrameOutputs.load(tmp_path / "o.npz")
    assert back.videos == out.videos and np.array_equal(back.au, out.au)
    m = mean_outputs([out, out.with_values(va=-out.va, au=None)])
    assert np.allclose(m.va, 0) and np.allclose(m.au, out.au)
    ann = _ann([("v1", 3), ("v0", 7)])
    rows, labels = align_annotations(out, ann)
    assert [out.images()[r] for r in rows] == ann.images()
    s = score_against(out, ann, PostProcess(smooth_va=3))
    assert s.n_expr == 2
    with pytest.raises(AbawError, match="1 of 2 annotated frames have no output"):
        align_annotations(out, _ann([("v1", 3), ("v9", 1)]))


def test_alignment_with_a_real_store(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    fs.write_video("v", np.array([2, 4, 6]), np.zeros(3), np.ones(3, bool), {})
    fs.write_features("v", "k", np.arange(9).reshape(3, 3), FP)
    t = load_features(fs, ["k"])
    got = align_labels(t, _ann([("v", 4), ("v", 6)]))
    assert t.feats["k"][got.rows, 0].tolist() == [3.0, 6.0]


def test_postprocess_fit_on_annotations_uses_unlabelled_neighbours():
    from abaw.pipeline.train.postprocess import fit_postprocess_annotations

    out, rng = _outputs((120, 90), seed=2)
    clean = np.zeros((len(out), 2), np.float32)
    for v in range(2):  # piecewise-constant truth, noisy outputs on every frame
        m = out.video_idx == v
        clean[m] = np.repeat(rng.uniform(-0.8, 0.8, (10, 2)), 15, axis=0)[: m.sum()]
    out = out.with_values(va=np.clip(clean + rng.normal(0, 0.4, clean.shape), -1, 1).astype(np.float32))
    keep = np.flatnonzero(out.frame % 3 == 0)  # only every third frame is labelled
    rows = keep[::-1]  # annotation order differs from output order
    names = [(out.videos[out.video_idx[i]], int(out.frame[i])) for i in rows]
    ann = _ann(names)
    ann = Annotations(ann.videos, ann.video_idx, ann.frame, clean[np.sort(keep)], ann.expr, ann.au)
    pp, steps = fit_postprocess_annotations(out, ann, windows=(1, 5, 9))
    assert pp.smooth_va == 9 and steps[-1]["va"] > steps[0]["va"] + 0.1
    assert score_against(out, ann, pp).va == pytest.approx(steps[-1]["va"])
