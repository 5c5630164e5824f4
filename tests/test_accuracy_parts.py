"""The parts behind bench/bench_accuracy.py: the `linear` head and cross-fitted post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abaw.cache.store import FeatureStore, load_features
from abaw.heads.model import ModelSpec, build_model
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.crossfit import (CrossfitConfig, PostFit, apply_to, crossfit, fit_postfit, make_series,
                                    score_values, smooth, video_bootstrap_se)
from abaw.pipeline.train.dataset import Labels
from abaw.pipeline.train.outputs import FrameOutputs
from abaw.pipeline.train.postprocess import score_against
from abaw.pipeline.train.postprocess import smooth_series
from abaw.pipeline.train.run import load_run
from abaw.pipeline.train import train



# ------------------------------------------------------------------ linear head

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_head_outputs_and_standardisation():
    spec = ModelSpec(keys=("a", "b"), dims=(5, 3), arch="linear", dropout=0.0)
    model = build_model(spec).eval()
    mean = [torch.arange(5.0), torch.full((3,), -2.0)]
    model.set_feature_stats([(mean[0], torch.full((5,), 2.0)), (mean[1], torch.ones(3))])
    x = [torch.randn(2, 7, 5) * 10, torch.randn(2, 7, 3)]
    out = model(x, torch.ones(2, 7, dtype=torch.bool))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"va": (2, 7, 2), "expr": (2, 7, 8), "au": (2, 7, 12)}
    assert out["va"].abs().max() <= 1
    at_mean = model([m.expand(1, 1, -1) for m in mean], torch.ones(1, 1, dtype=torch.bool))
    assert torch.allclose(at_mean["expr"][0, 0], model.heads["expr"].bias)  # standardised input is exactly 0
    assert build_model(ModelSpec(keys=("a",), dims=(4,), tasks=("au",), arch="linear")).heads.keys() == {"au"}


@pytest.fixture(scope="module")
def linear_data(tmp_path_factory, synthetic_split):
    rng = np.random.default_rng(3)
    fs = FeatureStore(tmp_path_factory.mktemp("lin") / "c.zarr", "a")
    proj = rng.standard_normal((22, 40)).astype(np.float32) * 3 + 5  # far from standardised
    tr = synthetic_split(fs, "t", 6, 120, proj, 1.0, rng)
    va = synthetic_split(fs, "v", 3, 120, proj, 1.0, rng)
    return tr, va, load_features(fs, ["synth"])


def test_linear_head_trains_predicts_and_reloads(linear_data, tmp_path):
    tr, va, table = linear_data
    cfg = TrainConfig.create(arch="linear", temporal="none", epochs=30, min_steps=0, batch_frames=128, lr=1e-2, dropout=0.0,
                      au_pos_weight="auto", smoothing=False, patience=100, select="total")
    run = train(cfg, table, tr, va, tmp_path / "lin", progress=False)
    final = run.result["val_final"]
    assert final["va"] > 0.6 and final["expr"] > 0.5 and final["au"] > 0.6, final
    norm = run.model.norms[0]
    assert norm.mean.abs().mean() > 1 and norm.std.mean() > 1  # training statistics stored as buffers
    again = load_run(tmp_path / "lin")
    assert type(again.model).__name__ == "LinearModel"
    a, b = run.predict(table), again.predict(table)
    np.testing.assert_allclose(a.au, b.au, atol=1e-6)
    assert score_against(b, va, again.postprocess).total == pytest.approx(final["total"], abs=1e-6)


def test_lbfgs_solver_reaches_the_logistic_regression_optimum(linear_data, tmp_path):
    """`solver=lbfgs`: each task layer at the L2-penalised optimum scikit-learn finds on the same
    standardised features (EXPR multinomial, each AU binary, C alike), in one epoch."""
    from sklearn.linear_model import LogisticRegression

    from abaw.pipeline.train.dataset import Batcher, align_labels

    tr, va, table = linear_data
    c = 0.5
    cfg = TrainConfig.create(arch="linear", temporal="none", solver="lbfgs", lbfgs_c=c, au_pos_weight="none",
                             expr_class_weight="none", smoothing=False)
    run = train(cfg, table, tr, va, tmp_path / "lb", progress=False)
    assert run.result["epochs_run"] == 1 and run.result["best_epoch"] == 1
    final = run.result["val_final"]
    assert final["va"] > 0.6 and final["expr"] > 0.4 and final["au"] > 0.6, final  # EXPR unweighted here
    fs = align_labels(table, tr)
    batch = Batcher(fs, ("synth",))(np.arange(len(fs))[:, None])
    with torch.no_grad():
        x = run.model.embed(batch["feats"], batch["mask"])[:, 0].double().numpy()
        out = run.model(batch["feats"], batch["mask"])
    lb = fs.labels
    m = lb.expr_valid
    sk = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x[m], lb.expr[m])
    ours = torch.softmax(out["expr"][:, 0], -1).double().numpy()
    np.testing.assert_allclose(ours[:, sk.classes_], sk.predict_proba(x), atol=2e-3)
    for j in (0, 7):  # a common and a rare AU
        m = lb.au_valid
        sk = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x[m], lb.au[m, j])
        np.testing.assert_allclose(torch.sigmoid(out["au"][:, 0, j]).double().numpy(), sk.predict_proba(x)[:, 1],
                                   atol=2e-3)
    again = train(cfg, table, tr, va, tmp_path / "lb", resume=True, progress=False)  # finished: read back
    np.testing.assert_allclose(again.predict(table).au, run.predict(table).au, atol=1e-6)


def test_lbfgs_solver_fits_only_the_linear_head():
    from abaw.errors import AbawError

    with pytest.raises(AbawError, match="solver lbfgs fits the linear head only"):
        TrainConfig.create(solver="lbfgs").validate()
    with pytest.raises(AbawError, match="solver: one of adam, lbfgs"):
        TrainConfig.create(arch="linear", solver="sgd").validate()


# ------------------------------------------------------------------ cross-fitting

def _fake(n_videos=5, length=60, seed=0, signal=0.0):
    """Outputs (optionally correlated with the labels) for n_videos validation videos."""
    rng = np.random.default_rng(seed)
    n = n_videos * length
    vid = np.repeat(np.arange(n_videos), length).astype(np.int32)
    fr = np.tile(np.arange(1, length + 1), n_videos).astype(np.int32)
    va_t = np.clip(rng.standard_normal((n, 2)) * 0.4, -1, 1).astype(np.float32)
    ex_t = rng.integers(0, 8, n)
    au_t = (rng.random((n, 12)) < 0.3).astype(np.int8)
    labels = Labels(va_t, ex_t, au_t, np.ones(n, bool), np.ones(n, bool), np.ones(n, bool))
    out = FrameOutputs(tuple(f"v{i}" for i in range(n_videos)), vid, fr,
                       va=(signal * va_t + rng.standard_normal((n, 2)) * 0.3).astype(np.float32),
                       expr=rng.dirichlet(np.ones(8), n).astype(np.float32) + signal * np.eye(8)[ex_t],
                       au=(0.5 * rng.random((n, 12)) + signal * 0.5 * au_t).astype(np.float32))
    return out, labels


def test_crossfit_never_fits_on_the_scored_video():
    out, labels = _fake(n_videos=4, signal=0.5)
    cfg = CrossfitConfig(windows=(1, 5))
    seen: list[set[int]] = []

    def recording_fit(s, c):
        seen.append({int(v) for v in s.videos()})
        return fit_postfit(s, c)

    res = crossfit(make_series(out, labels, cfg), cfg, fit_fn=recording_fit)
    assert seen[0] == {0, 1, 2, 3}  # the optimistic fit: every video
    folds = seen[1:]
    assert len(folds) == 4 and sorted(res.folds) == [0, 1, 2, 3]
    for v, fold_videos in zip(range(4), folds):
        assert fold_videos == {0, 1, 2, 3} - {v}


def test_crossfit_leaves_out_both_tracks_of_a_clip():
    """`a_left` and `a_right` are two people of one clip: the post-processing applied to one
    is never fitted on the other (nor is a fold of the honest estimate or of a blend)."""
    from abaw.data.labels import clip_ids, clip_of
    from abaw.pipeline.train.honest import FoldTracker, assign_folds

    names = ("a_left", "a_right", "b", "c_left", "c_right", "d")
    assert [clip_of(v) for v in names] == ["a", "a", "b", "c", "c", "d"]
    out, labels = _fake(n_videos=6, signal=0.5)
    out = FrameOutputs(names, out.video_idx, out.frame, va=out.va, expr=out.expr, au=out.au)
    groups = clip_ids(out.videos, out.video_idx)
    assert len(np.unique(groups)) == 4
    seen: list[set[str]] = []

    def recording_fit(s, c):
        seen.append({names[int(v)] for v in s.videos()})
        return fit_postfit(s, c)

    cfg = CrossfitConfig(windows=(1, 5))
    res = crossfit(make_series(out, labels, cfg), cfg, fit_fn=recording_fit, groups=groups)
    assert sorted(seen[1:], key=sorted) == sorted([set(names) - {"a_left", "a_right"}, set(names) - {"b"},
                                                   set(names) - {"c_left", "c_right"}, set(names) - {"d"}], key=sorted)
    assert len(res.folds) == 4
    by_video = crossfit(make_series(out, labels, cfg), cfg)  # without groups: one video at a time
    assert len(by_video.folds) == 6
    fold = assign_folds(groups, 3)
    assert fold[out.video_idx == 0][0] == fold[out.video_idx == 1][0]  # a_left and a_right: one fold
    tracker = FoldTracker(out.video_idx, labels, 3, groups=groups)
    assert np.array_equal(tracker.fold, fold)
    with pytest.raises(ValueError, match="groups for"):
        crossfit(make_series(out, labels, cfg), cfg, groups=groups[:10])
    # a resumed run keeps its tracked epochs only when they were tracked over the same folds
    tracker.update(1, out.with_values(expr=None, au=None), ("va",))
    st = tracker.state()
    same = FoldTracker(out.video_idx, labels, 3, groups=groups)
    same.load(st)
    assert same.best_epoch == tracker.best_epoch != [{}] * 3
    by_video = FoldTracker(out.video_idx, labels, 3)  # other folds: the state does not apply
    assert not np.array_equal(by_video.fold, tracker.fold)
    by_video.load(st)
    assert by_video.best_epoch == [{}] * 3
    old = {k: v for k, v in by_video_state(out, labels).items() if k != "fold"}  # saved before clip groups
    again = FoldTracker(out.video_idx, labels, 3, groups=groups)
    again.load(old)
    assert again.best_epoch == [{}] * 3  # its folds were by video: not these
    legacy = FoldTracker(out.video_idx, labels, 3, groups=out.video_idx)
    legacy.load(old)
    assert legacy.best_epoch != [{}] * 3


def by_video_state(out, labels):
    from abaw.pipeline.train.honest import FoldTracker

    t = FoldTracker(out.video_idx, labels, 3)
    t.update(1, out.with_values(expr=None, au=None), ("va",))
    return t.state()


def test_crossfit_honest_below_optimistic_on_noise():
    out, labels = _fake(n_videos=6, seed=1, signal=0.0)
    res = crossfit(make_series(out, labels), CrossfitConfig())
    assert res.optimistic["au"] > res.honest["au"]  # thresholds fitted on noise do not transfer
    assert res.optimistic["total"] > res.honest["total"]
    assert set(res.to_dict()) == {"raw", "optimistic", "honest", "fit_all", "folds"}


def test_crossfit_finds_the_signal_and_applies_to_new_outputs():
    out, labels = _fake(n_videos=5, seed=2, signal=1.0)
    res = crossfit(make_series(out, labels), CrossfitConfig())
    assert res.honest["total"] > res.raw["total"] - 0.3 and res.honest["au"] > 0.6
    vals = apply_to(out, res.fit_all)
    k, w = res.fit_all.smooth["va"]
    np.testing.assert_allclose(vals["va"], smooth(out.va, out.video_idx, out.frame, k, w))


def test_fit_thresholds_after_smoothing_jointly():
    out, labels = _fake(n_videos=3, seed=4, signal=0.3)
    pf = fit_postfit(make_series(out, labels, CrossfitConfig(kernels=("box",), windows=(1, 9))),
                     CrossfitConfig(kernels=("box",), windows=(1, 9)))
    assert isinstance(pf, PostFit) and len(pf.au_thresholds) == 12 and set(pf.smooth) == {"va", "expr", "au"}
    pf_none = fit_postfit(make_series(out, labels, CrossfitConfig(thresholds=False)), CrossfitConfig(thresholds=False))
    assert pf_none.au_thresholds is None


def test_smoothing_kernels():
    rng = np.random.default_rng(0)
    vid = np.array([0] * 6 + [1] * 4)
    fr = np.array([1, 2, 3, 4, 5, 50, 1, 2, 3, 4])
    x = rng.standard_normal((10, 3))
    # box = the tool's moving average (frame-number distance, never across videos)
    np.testing.assert_allclose(smooth(x, vid, fr, "box", 5), smooth_series(x, vid, fr, 5))
    for k in ("box", "gaussian", "median"):
        y = smooth(x, vid, fr, k, 5)
        np.testing.assert_allclose(y[5], x[5])  # frame 50 has no neighbour within +-2
        np.testing.assert_allclose(y[6:], smooth(x[6:], vid[6:], fr[6:], k, 5))  # video 1 on its own
        np.testing.assert_allclose(smooth(np.ones((10, 1)), vid, fr, k, 9), 1.0)  # constants stay
        np.testing.assert_allclose(smooth(x, vid, fr, k, 1), x)
    spike = np.zeros((9, 1))
    spike[4] = 10.0
    assert smooth(spike, np.zeros(9, int), np.arange(9), "median", 3)[4, 0] == 0.0  # median removes a spike
    g = smooth(spike, np.zeros(9, int), np.arange(9), "gaussian", 9)[:, 0]
    assert g[4] > g[3] > g[2] > 0  # centre-weighted
    with pytest.raises(ValueError):
        smooth(x, vid, fr, "mean", 3)


# ------------------------------------------------------------------ honest estimate and the step schedule

def test_folds_are_whole_videos_and_balanced():
    from abaw.pipeline.train.honest import assign_folds

    vid = np.repeat(np.arange(7), [50, 40, 30, 30, 20, 10, 10])
    fold = assign_folds(vid, 3)
    for v in range(7):
        assert len(set(fold[vid == v])) == 1  # a video never straddles folds
    sizes = np.bincount(fold)
    assert len(sizes) == 3 and sizes.max() - sizes.min() <= 20
    assert assign_folds(vid[:50], 5).max() == 0  # one video: one fold (no honest estimate)


def test_fold_tracker_chooses_each_folds_epoch_without_it():
    """Epoch 1 is good on videos 0-2 only, epoch 2 on video 3 only: the fold holding video 3
    must take its epoch from the others (1), and then scores badly on video 3."""
    from abaw.pipeline.train.honest import FoldTracker

    out, labels = _fake(n_videos=4, signal=1.0)
    good_va = labels.va.copy()
    bad_va = -labels.va
    vid = out.video_idx
    e1 = out.with_values(va=np.where((vid < 3)[:, None], good_va, bad_va).astype(np.float32), expr=None, au=None)
    e2 = out.with_values(va=np.where((vid == 3)[:, None], good_va, bad_va).astype(np.float32), expr=None, au=None)
    tr = FoldTracker(vid, labels, 4)
    tr.update(1, e1, ("va",))
    tr.update(2, e2, ("va",))
    assert tr.best_epoch == [{"total": 1}] * 4  # on every fold's complement epoch 1 is better
    h = tr.estimate(e1, CrossfitConfig(smoothing=False, thresholds=False))
    assert h["folds"] == 4 and h["va"] < 0.6  # video 3 is scored with epoch 1's (bad) outputs
    st = tr.state()
    again = FoldTracker(vid, labels, 4)
    again.load(st)
    assert again.best_epoch == tr.best_epoch and np.array_equal(again.outputs[3]["va"], tr.outputs[3]["va"])
    per = FoldTracker(vid, labels, 4, per_task=True)  # select=task: the same choice, per task
    per.update(1, e1, ("va",))
    per.update(2, e2, ("va",))
    assert per.best_epoch == [{"va": 1}] * 4 and per.estimate(e1, CrossfitConfig(smoothing=False, thresholds=False))[
        "fold_epochs"] == [{"va": 1}] * 4


def test_honest_outputs_take_each_row_from_the_epoch_its_fold_did_not_choose_on():
    """Epoch 1 is right on videos 0-1, epoch 2 on videos 2-3: each video's complement has two
    videos right under the other epoch, so every row's honest output is the wrong epoch's."""
    from abaw.pipeline.train.honest import FoldTracker

    out, labels = _fake(n_videos=4, signal=1.0)
    vid = out.video_idx
    right, wrong = labels.va, -labels.va
    e1 = out.with_values(va=np.where((vid < 2)[:, None], right, wrong).astype(np.float32), expr=None, au=None)
    e2 = out.with_values(va=np.where((vid >= 2)[:, None], right, wrong).astype(np.float32), expr=None, au=None)
    tr = FoldTracker(vid, labels, 4)
    tr.update(1, e1, ("va",))
    tr.update(2, e2, ("va",))
    chosen = {int(vid[tr.fold == f][0]): tr.best_epoch[f]["total"] for f in range(4)}
    assert chosen == {0: 2, 1: 2, 2: 1, 3: 1}
    h = tr.honest_outputs(e1)
    assert h is not None and h.expr is None and np.array_equal(h.frame, e1.frame)
    assert np.array_equal(h.va, wrong.astype(np.float32))  # no row at the epoch that is right on it
    assert FoldTracker(vid[:60], labels.take(np.arange(60)), 4).honest_outputs(e1.take(np.arange(60))) is None


def test_video_bootstrap_se_measures_the_spread_between_videos():
    out, labels = _fake(n_videos=8, seed=4, signal=0.6)
    s = make_series(out, labels, CrossfitConfig(smoothing=False))
    values = {t: getattr(out, t) for t in ("va", "expr", "au")}
    se = video_bootstrap_se(values, s, None)
    assert 0 < se < 0.5
    assert video_bootstrap_se(values, s, None, seed=1) == pytest.approx(se, rel=0.3)  # not one resample's luck
    # eight copies of one video: resampling videos changes nothing
    one = np.flatnonzero(out.video_idx == 0)
    same = FrameOutputs(out.videos, out.video_idx, out.frame,
                        **{t: np.tile(getattr(out, t)[one], (8, 1)) for t in ("va", "expr", "au")})
    lab = labels.take(np.tile(one, 8))
    s2 = make_series(same, lab, CrossfitConfig(smoothing=False))
    assert video_bootstrap_se({t: getattr(same, t) for t in ("va", "expr", "au")}, s2, None) < 1e-9
    # per-row thresholds (cross-fitted per fold) follow their rows
    thr = np.where(out.video_idx[:, None] < 4, 0.4, 0.6) * np.ones((1, 12))
    assert video_bootstrap_se(values, s, thr) > 0
    assert score_values(values, s, thr)["total"] != score_values(values, s, None)["total"]
    assert video_bootstrap_se(values, s.take(np.flatnonzero(out.video_idx == 0)), None) is None
    # clips as units: one clip (all eight tracks) cannot be resampled; four pairs give another spread
    assert video_bootstrap_se(values, s, None, groups=np.zeros(len(s), np.int64)) is None
    pairs = video_bootstrap_se(values, s, None, groups=out.video_idx // 2)
    assert pairs is not None and pairs > 0 and pairs != se


def test_min_steps_spread_over_epochs_and_honest_reported(linear_data, tmp_path):
    import json

    tr, va, table = linear_data
    cfg = TrainConfig.create(arch="linear", temporal="none", epochs=4, min_steps=40, batch_frames=128, lr=1e-2,
                             patience=100, honest_folds=3, smooth_windows=(1, 5))
    run = train(cfg, table, tr, va, tmp_path / "steps", progress=False)
    hist = json.loads((tmp_path / "steps" / "metrics.json").read_text())["epochs"]
    passes = -(-720 // 128)  # one pass over 6 x 120 training frames
    assert passes < 10 and all(h["batches"] == 10 for h in hist)  # ceil(40 / 4) steps per epoch
    h = run.result.honest
    assert h["folds"] == 3 and len(h["fold_epochs"]) == 3 and set(h) >= {"va", "expr", "au", "total", "se"}
    assert h["se"] > 0 and f"± {h['se']:.3f}" in run.result.format()
    res = json.loads((tmp_path / "steps" / "result.json").read_text())
    assert res["honest"]["total"] == pytest.approx(h["total"])


def test_old_run_configs_keep_their_schedule(tmp_path):
    from abaw.io import write_json
    from abaw.pipeline.train.run import RUN_VERSION, read_config

    write_json(tmp_path / "config.json", {"abaw_run": RUN_VERSION, "config": {"epochs": 7, "batch_frames": 1024}})
    cfg = read_config(tmp_path)
    assert (cfg.epochs, cfg.batch_frames, cfg.min_steps, cfg.smooth_kernels, cfg.honest_folds) == (7, 1024, 0, ("box",), 0)
