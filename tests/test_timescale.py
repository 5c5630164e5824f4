"""One time scale in training and prediction: gap statistics in runs, strided prediction over
dense frames, dense context (every cached frame in the windows, losses on the labelled ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cache.store import FeatureStore, load_features
from abaw.cli import main
from abaw.data.annotations import Annotations, read_annotations
from abaw.data.label_stats import gap_stats, label_stats
from abaw.errors import AbawError
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.dataset import (
    Batcher,
    align_labels,
    context_frames,
    labelled_windows,
    strided_windows,
    train_windows,
)
from abaw.pipeline.train.loop import train
from abaw.pipeline.train.outputs import FrameOutputs
from abaw.pipeline.train.run import load_run
from abaw.pipeline.train.timescale import plan_time_scale, window_gap

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(backbones=("synth",), temporal="transformer", d_model=16, heads=2, window=8, batch_frames=64,
             smoothing=False, epochs=2, min_steps=0, lr=3e-3)
FILES = {"train": "training_set_annotations.txt", "val": "validation_set_annotations.txt",
         "test": "test_set_annotations.txt"}


@pytest.fixture(scope="module")
def dense_cache(tiny_synth, tmp_path_factory):
    """Features of *every* frame of tiny_synth's videos (its labels are sparse, the real gaps):
    a noisy linear view of the labels of the nearest labelled frame; a few frames lack a face."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("dense") / "dense.zarr"
    fs = FeatureStore(path, "a")
    proj = rng.standard_normal((22, 16)).astype(np.float32)
    anns = {s: read_annotations(tiny_synth / f) for s, f in FILES.items()}
    for ann in anns.values():
        for v in ann.videos:
            sl = ann.video_slice(v)
            lab_fr = ann.frame[sl]
            fr = np.arange(1, int(lab_fr.max()) + 4)
            near = np.clip(np.searchsorted(lab_fr, fr), 0, len(lab_fr) - 1)
            lab = np.concatenate([np.clip(ann.va[sl], -1, 1), np.eye(8)[np.maximum(ann.expr[sl], 0)],
                                  np.maximum(ann.au[sl], 0)], 1)[near]
            face = np.ones(len(fr), bool)
            unl = np.flatnonzero(~np.isin(fr, lab_fr))
            face[unl[::7]] = False  # faces lost on some unlabelled frames
            x = lab @ proj + 1.5 * rng.standard_normal((len(fr), 16))
            fs.write_video(v, fr, fr / 30.0, face, {})
            fs.write_features(v, "synth", x.astype(np.float32), {"spec": "synthetic:synth", "dim": 16,
                                                                 "preprocess": {}, "weights_sha256": "0"})
    return path, anns, load_features(fs, ["synth"])


def test_strided_windows_cover_every_frame_once_at_the_step():
    segs = np.array([[0, 10], [10, 13], [13, 14]])
    w = strided_windows(segs, 3, 4)
    pos = w[w >= 0]
    assert sorted(pos.tolist()) == list(range(14))  # every position exactly once
    for row in w:
        p = row[row >= 0]
        seg = np.searchsorted(segs[:, 1], p, side="right")
        assert len(set(seg)) == 1  # never across a segment
        assert np.all(np.diff(p) == 4)  # neighbours are `step` positions apart
    assert np.array_equal(strided_windows(segs, 3, 1), strided_windows(segs, 3, 0))


def test_dense_context_windows_all_frames_and_masks_unlabelled_ones(dense_cache):
    _, anns, table = dense_cache
    fs = align_labels(table, anns["train"])
    assert context_frames(fs, "labelled") is fs
    with pytest.raises(AbawError, match="context 'wide'"):
        context_frames(fs, "wide")
    ctx = context_frames(fs, "dense")
    in_videos = np.isin(table.video_idx, np.unique(fs.video_idx))
    assert len(ctx) == int((table.face & in_videos).sum()) > 3 * len(fs)
    assert np.array_equal(ctx.rows[ctx.targets], fs.rows)  # labelled frames, in fs's order
    assert window_gap(ctx) == 1.0 and window_gap(fs) >= 2.0
    for t in ("va", "expr", "au"):  # labels exist only at the labelled frames
        valid = ctx.labels.valid(t)
        assert np.array_equal(np.flatnonzero(valid), np.sort(ctx.targets[fs.labels.valid(t)]))
    wins = train_windows(ctx.segments, 8, 8, np.random.default_rng(0))
    kept = labelled_windows(wins, ctx)
    is_target = np.zeros(len(ctx), bool)
    is_target[ctx.targets] = True
    assert len(kept) < len(wins) and all(is_target[r[r >= 0]].any() for r in kept)
    b = Batcher(ctx, ("synth",))(kept)
    lab = np.where(kept >= 0, is_target[np.maximum(kept, 0)], False)
    for t in ("va", "expr", "au"):  # the loss masks: labelled frames only
        m = b[f"{t}_valid"].numpy()
        assert m.any() and not (m & ~lab).any()


def test_runs_record_gaps_and_predict_dense_frames_at_the_training_scale(dense_cache, tiny_synth, tmp_path):
    from abaw.pipeline.predict.system import load_system, predict_test_list

    path, anns, table = dense_cache
    run = train(TrainConfig.create(**SMALL), table, anns["train"], anns["val"], tmp_path / "run", progress=False)
    data = json.loads((run.path / "data.json").read_text())
    for split in ("train", "val"):  # every labelled frame has a feature here: the annotation statistics
        want = label_stats(anns[split])
        assert data[split]["gaps"]["gap"] == want["gap"] and want["gap"]["median"] >= 2
        assert data[split]["gaps"]["frames_per_video"] == want["frames_per_video"]
    fs = align_labels(table, anns["train"])
    assert data["time_scale"] == {"context": "labelled", "window_gap": window_gap(fs), "frames": len(fs)}
    loaded = load_run(run.path)
    assert loaded.train_gap == run.train_gap == window_gap(fs)
    # every cached frame of the test videos: 1 frame apart, predicted in passes at the training gap
    test = load_features(path, ["synth"], videos=list(anns["test"].videos))
    ts = loaded.time_scale(test)
    assert ts.mode == "subsampled" and ts.frames_gap == 1 and ts.step == round(window_gap(fs))
    dense = loaded.predict(test)
    assert len(dense) == int(test.face.sum())  # each face frame once
    off = loaded.predict(test, time_scale="off")
    assert np.array_equal(dense.frame, off.frame) and not np.allclose(dense.au, off.au)
    # the labelled frames themselves are as sparse as in training: predicted as they are
    assert loaded.time_scale(align_labels(table, anns["val"])).step == 1
    # the submission records the choice
    res = predict_test_list(load_system([str(run.path)]), path, tiny_synth / "MTL.txt", tmp_path / "sub.txt")
    assert res.report["time_scale"][str(run.path)]["mode"] == "subsampled"
    assert "time scale: trained on frames" in res.format()


def test_dense_predictions_at_the_training_gap_equal_the_labelled_ones(tmp_path, synthetic_split):
    """Labels on every 4th frame: a window-span-dependent model (a transformer) predicts the labelled
    frames of a dense cache exactly as it predicts the labelled frames alone."""
    rng = np.random.default_rng(1)
    fstore = FeatureStore(tmp_path / "c.zarr", "a")
    proj = rng.standard_normal((22, 16)).astype(np.float32)
    tr, va = (synthetic_split(fstore, p, n, 120, proj, 3.0, rng) for p, n in (("t", 3), ("v", 2)))

    def every4(a: Annotations) -> Annotations:
        i = np.flatnonzero((a.frame - 1) % 4 == 0)
        return Annotations(a.videos, a.video_idx[i], a.frame[i], a.va[i], a.expr[i], a.au[i])

    table = load_features(fstore, ["synth"])
    run = train(TrainConfig.create(**SMALL), table, every4(tr), every4(va), tmp_path / "r", progress=False)
    assert run.train_gap == 4.0
    val_fs = align_labels(table, every4(va))
    labelled = run.predict(val_fs)
    dense = run.predict(table)
    keys = (dense.video_idx.astype(np.int64) << 32) | dense.frame
    at = np.searchsorted(keys, (labelled.video_idx.astype(np.int64) << 32) | labelled.frame)
    np.testing.assert_allclose(dense.au[at], labelled.au, atol=1e-6)
    np.testing.assert_allclose(dense.va[at], labelled.va, atol=1e-6)
    off = run.predict(table, time_scale="off")
    assert np.abs(off.au[at] - labelled.au).max() > 1e-2
    assert plan_time_scale(None, val_fs).mode == "unknown"  # runs without the statistics: as before


def test_cli_train_heads_context_dense(dense_cache, tiny_synth, tmp_path):
    path, anns, table = dense_cache
    out = tmp_path / "dense"
    args = ["train-heads", "--cache", str(path), "--data", str(tiny_synth), "--out", str(out), "--backbone", "synth",
            "--d-model", "16", "--heads", "2", "--window", "8", "--batch-frames", "64", "--epochs", "2", "--min-steps", "0", "--quiet",
            "--context", "dense"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["config"]["context"] == "dense"
    data = json.loads((out / "data.json").read_text())
    assert data["time_scale"]["context"] == "dense" and data["time_scale"]["window_gap"] == 1.0
    assert data["train"]["context_frames"] > 3 * data["train"]["frames"]
    assert data["train"]["gaps"]["gap"]["median"] >= 2  # the labelled frames stay sparse
    # validation outputs (selection, post-processing) are those of the labelled frames only
    val = FrameOutputs.load(out / "val_outputs.npz")
    fs = align_labels(table, anns["val"])
    assert np.array_equal(val.frame, fs.frame) and len(val) == data["val"]["frames"]
    run = load_run(out)
    assert run.time_scale(table).mode == "as-trained"
    assert run.time_scale(fs).mode == "sparser"
    bad = CliRunner().invoke(main, args[:-1] + ["wide", "--overwrite"])
    assert bad.exit_code == 2 and "wide" in bad.output
    assert gap_stats(fs.video_idx, fs.frame)["frames"] == len(fs)
