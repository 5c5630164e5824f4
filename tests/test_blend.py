"""`abaw blend`: per-task weights on the simplex, cross-fitted over validation-video folds,
loaded by `predict --compose` and `export-system`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cache.store import FeatureStore
from abaw.cli import main
from abaw.data.annotations import Annotations, read_annotations
from abaw.data.labels import clip_of
from abaw.errors import AbawError
from abaw.pipeline.blend import BlendConfig, BlendData, evaluate_blend
from abaw.pipeline.blend_weights import search_weights, simplex_grid
from abaw.pipeline.crossfit import CrossfitConfig
from abaw.pipeline.search.runner import kfold_videos
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.dataset import Labels
from abaw.pipeline.train.loop import train
from abaw.pipeline.train.outputs import FrameOutputs, combine

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = ("training_set_annotations.txt", "validation_set_annotations.txt", "test_set_annotations.txt")
SMALL = dict(temporal="none", d_model=16, window=8, batch_frames=64, epochs=2, min_steps=0, lr=3e-3,
             smooth_windows=(1, 3, 5), smooth_kernels=("box", "gaussian"))


def cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def two_runs(tiny_synth, tmp_path_factory):
    """Two runs on tiny_synth, each on its own synthetic backbone ('a' cleaner than 'b')."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("blend")
    fs = FeatureStore(root / "cache.zarr", "a")
    anns = [read_annotations(tiny_synth / f) for f in FILES]
    proj = {k: rng.standard_normal((22, 12)).astype(np.float32) for k in ("a", "b")}
    for ann in anns:
        for v in ann.videos:
            sl = ann.video_slice(v)
            fr = ann.frame[sl]
            lab = np.concatenate([np.clip(ann.va[sl], -1, 1), np.eye(8)[np.maximum(ann.expr[sl], 0)],
                                  np.maximum(ann.au[sl], 0)], 1)
            fs.write_video(v, fr, fr / 30.0, np.ones(len(fr), bool), {})
            for k, noise in (("a", 1.0), ("b", 2.0)):
                x = lab @ proj[k] + noise * rng.standard_normal((len(fr), 12))
                fs.write_features(v, k, x.astype(np.float32), {"spec": f"synthetic:{k}", "dim": 12,
                                                               "preprocess": {}, "weights_sha256": "0"})
    runs = {}
    for k in ("a", "b"):
        cfg = TrainConfig.create(backbones=(k,), **SMALL)
        runs[k] = train(cfg, fs, anns[0], anns[1], root / f"run_{k}", progress=False).path
    return root, runs


def test_blend_of_two_runs_predicts_and_exports(two_runs, tiny_synth, tmp_path):
    root, runs = two_runs
    out = cli("blend", runs["a"], runs["b"], "-o", tmp_path / "blend.json", "--steps", "4")
    assert "honest" in out and "blend (prob)" in out
    doc = json.loads((tmp_path / "blend.json").read_text())
    assert doc["mode"] == "blend" and set(doc["tasks"]) == {"va", "expr", "au"}
    for e in doc["tasks"].values():
        w = np.array([m["weight"] for m in e["members"]])
        assert len(w) == 2 and (w >= 0).all() and abs(w.sum() - 1) < 1e-9
        assert all(abs(x * 4 - round(x * 4)) < 1e-9 for x in w)  # on the grid of --steps 4
        assert abs(sum(e["weights"]) - 1) < 1e-9
    k = len(doc["folds"]["videos"])
    assert sorted(v for f in doc["folds"]["videos"] for v in f) == \
        sorted(read_annotations(tiny_synth / FILES[1]).videos)  # every validation video in one fold
    clips = [{clip_of(v) for v in f} for f in doc["folds"]["videos"]]
    assert k == len({c for f in clips for c in f}) == 2 and not clips[0] & clips[1]  # a clip's tracks: one fold
    assert len(doc["folds"]["weights"]) == k and doc["scores"]["honest"]["total"] == doc["honest"]
    assert [m["source"] for m in doc["members"]] == [str(runs["a"]), str(runs["b"])]  # each alone, scored too
    assert all(m["honest"]["total"] is not None for m in doc["members"])

    sub = tmp_path / "sub.txt"
    out = cli("predict", "--compose", tmp_path / "blend.json", "--cache", root / "cache.zarr",
              "--test-list", tiny_synth / "MTL.txt", "--out", sub, "--quiet")
    assert "blend, prob space" in out
    cli("export-system", tmp_path / "blend.json", "-o", tmp_path / "system")
    manifest = json.loads((tmp_path / "system" / "system.json").read_text())
    assert manifest["blend"]["space"] == "prob" and set(manifest["blend"]["weights"]) == {"va", "expr", "au"}
    # (the synthetic backbones cannot be rebuilt, so `predict --system` is not run here)
    assert manifest["blend"]["postprocess"] == doc["postprocess"]
    assert manifest["blend"]["weights"] == {t: e["weights"] for t, e in doc["tasks"].items()}
    # the logit space is a different blend of the same runs, also loadable
    cli("blend", runs["a"], runs["b"], "-o", tmp_path / "logit.json", "--space", "logit", "--steps", "2")
    cli("predict", "--compose", tmp_path / "logit.json", "--cache", root / "cache.zarr",
        "--test-list", tiny_synth / "MTL.txt", "--out", tmp_path / "sub3.txt", "--quiet")


def test_one_run_blend_equals_the_run(two_runs, tiny_synth, tmp_path):
    root, runs = two_runs
    cli("blend", runs["a"], "-o", tmp_path / "one.json")
    doc = json.loads((tmp_path / "one.json").read_text())
    own = json.loads((runs["a"] / "postprocess.json").read_text())["postprocess"]
    assert doc["postprocess"] == own  # the same post-processing search on the same outputs
    assert all(e["weights"] == [1.0] for e in doc["tasks"].values())
    args = ["--cache", root / "cache.zarr", "--test-list", tiny_synth / "MTL.txt", "--quiet"]
    cli("predict", "--compose", tmp_path / "one.json", "--out", tmp_path / "blend.txt", *args)
    cli("predict", "--run", runs["a"], "--out", tmp_path / "run.txt", *args)
    assert (tmp_path / "blend.txt").read_text() == (tmp_path / "run.txt").read_text()


def test_bad_blend_inputs_are_one_line_errors(two_runs, tmp_path):
    root, runs = two_runs
    first = tmp_path / "b.json"
    cli("blend", runs["a"], "-o", first, "--steps", "1")
    before = first.read_text()
    for args, msg in (([runs["a"], "-o", first], "exists; choose another -o or pass --overwrite"),
                      ([first, "-o", tmp_path / "c.json"], "is a blend; give its sources"),
                      ([root, "-o", tmp_path / "d.json"], "no such file")):
        r = CliRunner().invoke(main, ["blend", *map(str, args)])
        assert r.exit_code == 1 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert first.read_text() == before and not (tmp_path / "c.json").exists()


def _constructed(n0: int = 40, n1: int = 30) -> BlendData:
    """Two videos; member A knows VA on video 0 only, member B on video 1 only."""
    rng = np.random.default_rng(3)
    n = n0 + n1
    truth = np.clip(np.cumsum(rng.standard_normal((n, 2)) * 0.2, 0), -1, 1).astype(np.float32)
    noise = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    in0 = np.arange(n) < n0
    a = np.where(in0[:, None], truth, noise)
    b = np.where(in0[:, None], noise, truth)
    frame = np.r_[np.arange(1, n0 + 1), np.arange(1, n1 + 1)].astype(np.int32)
    tmpl = FrameOutputs(("v0", "v1"), (~in0).astype(np.int32), frame)
    labels = Labels(truth, np.full(n, -1, np.int64), np.full((n, 12), -1, np.int8), np.ones(n, bool),
                    np.zeros(n, bool), np.zeros(n, bool))
    return BlendData(tmpl, np.arange(n), labels, {"va": [a, b]}, {"va": ["A", "B"]},
                     CrossfitConfig(windows=(1, 3), kernels=("box",)))


def test_a_folds_weights_never_saw_the_fold():
    fit = evaluate_blend(_constructed(), BlendConfig(steps=10, folds=2))
    assert fit.fold_videos == [["v0"], ["v1"]]  # the larger video first
    # fold 0 (v0, where only A is right) was blended with weights fitted on v1: all on B, and vice versa
    assert fit.fold_weights == [{"va": (0.0, 1.0)}, {"va": (1.0, 0.0)}]
    assert 0.0 < fit.weights["va"][0] < 1.0  # fitted on both videos: a mix
    assert fit.honest["va"] < 0.2 < fit.optimistic["va"]  # each video scored with the other's (wrong) member


def test_the_honest_estimate_scores_the_members_honest_outputs():
    """Best-epoch outputs equal to the labels (an epoch chosen on the scored rows) but honest
    outputs of the opposite sign: the honest estimate must see those, the optimistic score the labels."""
    d = _constructed()
    truth = d.labels.va
    leaky = BlendData(d.template, d.rows, d.labels, {"va": [truth]}, {"va": ["A"]}, d.cfg, {"va": [-truth]})
    fit = evaluate_blend(leaky, BlendConfig(steps=10, folds=2))
    assert fit.optimistic["va"] > 0.99 and fit.honest["va"] < 0
    without = evaluate_blend(BlendData(d.template, d.rows, d.labels, {"va": [truth]}, {"va": ["A"]}, d.cfg),
                             BlendConfig(steps=10, folds=2))
    assert without.honest["va"] > 0.99  # no honest outputs: the best-epoch ones are all there is
    assert leaky.alone("A").honest is not None


def test_runs_write_honest_outputs_and_blends_read_them(two_runs):
    from abaw.pipeline.blend import Member, member_outputs

    _, runs = two_runs
    best = FrameOutputs.load(runs["a"] / "val_outputs.npz")
    hon = FrameOutputs.load(runs["a"] / "val_outputs_honest.npz")
    assert np.array_equal(best.frame, hon.frame) and best.tasks == hon.tasks
    m = Member("a", (runs["a"],), best.tasks)
    assert np.array_equal(member_outputs(m, honest=True)[0].au, hon.au)
    assert np.array_equal(member_outputs(m)[0].au, best.au)


def test_weights_on_the_simplex():
    g = simplex_grid(3, 5)
    assert len(g) == 21 and np.allclose(g.sum(1), 1) and (g >= 0).all()
    assert search_weights(lambda w: -abs(w[0] - 0.3), 2, 10) == pytest.approx((0.3, 0.7))
    target = np.array([0.5, 0.2, 0.3] + [0.0] * 9)  # 12 members: too many for the grid, coordinate search
    w = search_weights(lambda w: -float(((w - target) ** 2).sum()), 12, 10)
    assert np.allclose(w, target) and abs(sum(w) - 1) < 1e-9
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert np.array_equal(combine("au", [p], [1.0], "logit"), p.astype(np.float32))
    mixed = combine("expr", [p, p[::-1]], [0.5, 0.5], "logit")
    assert np.allclose(mixed.sum(1), 1) and np.allclose(mixed[0], mixed[1])
    with pytest.raises(AbawError, match="summing to 1"):
        combine("va", [p, p], [0.5, 0.6])


def test_seed_replicas_are_one_member(two_runs, tiny_synth, tmp_path):
    """Runs differing only in --seed are averaged with equal weights: one weight for the ensemble."""
    root, runs = two_runs
    cfg = TrainConfig.create(backbones=("a",), seed=1, **SMALL)
    anns = [read_annotations(tiny_synth / f) for f in FILES]
    a1 = train(cfg, FeatureStore(root / "cache.zarr", "r"), anns[0], anns[1], tmp_path / "run_a1", progress=False).path
    cli("blend", runs["a"], a1, runs["b"], "-o", tmp_path / "g.json", "--steps", "4")
    doc = json.loads((tmp_path / "g.json").read_text())
    for e in doc["tasks"].values():
        assert [m["source"] for m in e["members"]] == [f"{runs['a']}+{a1}", str(runs["b"])]
        w_ens = e["members"][0]["weight"]
        assert len(e["runs"]) == 3 and e["weights"][:2] == [w_ens / 2, w_ens / 2]
    cli("blend", runs["a"], a1, runs["b"], "-o", tmp_path / "apart.json", "--steps", "4", "--no-group-seeds")
    apart = json.loads((tmp_path / "apart.json").read_text())
    assert all(len(e["members"]) == 3 for e in apart["tasks"].values())
    r = CliRunner().invoke(main, ["blend", str(runs["a"]), str(runs["a"]), "-o", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "given twice" in r.output


@pytest.mark.parametrize("folds", [0, 2])
def test_search_compose_blend_is_a_seed_ensemble_with_the_linear_probe(two_runs, tiny_synth, tmp_path, folds):
    """With --folds: each fold's seed replicas averaged, the folds' outputs out-of-fold."""
    root, _ = two_runs
    sets = ["temporal=none", "d_model=16", "window=8", "batch_frames=64", "epochs=2", "min_steps=0", "lr=0.003",
            "smooth_windows=[1,3]"]
    out = cli("search", "--cache", root / "cache.zarr", "--data", tiny_synth, "--out", tmp_path / "s",
              "--backbones", "a", "--seeds", "0,1", *[x for s in sets for x in ("--set", s)],
              "--compose", "blend", "--folds", folds, "--quiet")
    assert "composed blend: P" in out and "honest" in out
    doc = json.loads((tmp_path / "s" / "composed.json").read_text())
    board = json.loads((tmp_path / "s" / "leaderboard.json").read_text())
    assert doc["mode"] == "blend" and len(board) == 3  # two seeds + the linear baseline
    linear = next(r["config"] for r in board if r["overrides"].get("arch") == "linear")
    seeded = sorted(r["config"] for r in board if r["config"] != linear)
    for e in doc["tasks"].values():
        names = [m["source"] for m in e["members"]]
        assert len(names) == 2 and linear in names and sorted(next(n for n in names if n != linear).split("+")) == seeded
        assert abs(sum(e["weights"]) - 1) < 1e-9 and all((tmp_path / "s" / r).is_dir() for r in e["runs"])
        assert len(e["runs"]) == 3 * max(1, folds)
    assert doc["honest"] == doc["scores"]["honest"]["total"]
    n_val = len(read_annotations(tiny_synth / FILES[1]).videos) + (len(read_annotations(tiny_synth / FILES[0]).videos)
                                                                    if folds else 0)
    assert sum(len(f) for f in doc["folds"]["videos"]) == n_val  # k-fold: every train + val video, out-of-fold
    cli("predict", "--compose", tmp_path / "s", "--cache", root / "cache.zarr", "--test-list", tiny_synth / "MTL.txt",
        "--out", tmp_path / "sub.txt", "--quiet")
    assert (tmp_path / "sub.txt").read_text().count("\n") > 1
    r = CliRunner().invoke(main, ["search", "--cache", str(root / "cache.zarr"), "--data", str(tiny_synth),
                                  "--out", str(tmp_path / "t"), "--seeds", "0,x"])
    assert r.exit_code == 2 and "--seeds" in r.output


def test_au_weights_are_scored_at_thresholds_from_other_folds():
    """The AU decisions a weight is scored on never used the scored fold's labels."""
    from abaw.pipeline.blend_weights import crossfit_au_decisions
    from abaw.pipeline.crossfit import GRID, Series

    rng = np.random.default_rng(5)
    n = 300
    vid = np.repeat(np.arange(6), 50)
    au = (rng.random((n, 12)) < 0.2).astype(np.int8)
    v = np.clip(0.3 * au + 0.7 * rng.random((n, 12)), 0, 1)
    fold = vid % 3

    def series(labels_au):
        return Series(vid, np.tile(np.arange(50), 6), {}, {"au": labels_au, "au_valid": np.ones(n, bool)}, {})

    dec = crossfit_au_decisions(v, series(au), fold, GRID)
    flipped = au.copy()
    flipped[fold == 0] = 1 - flipped[fold == 0]  # other labels on fold 0 ...
    again = crossfit_au_decisions(v, series(flipped), fold, GRID)
    np.testing.assert_array_equal(dec[fold == 0], again[fold == 0])  # ... leave its decisions unchanged
    assert (dec[fold != 0] != again[fold != 0]).any()  # (they fitted the other folds' thresholds)
    assert set(np.unique(dec)) <= {0.0, 1.0}
    with pytest.raises(AbawError, match="au-weight-folds"):
        BlendConfig(au_weight_folds=1).validate()


def test_weights_are_scored_after_smoothing():
    """A per-frame member (truth + frame noise: poor raw, excellent smoothed) against a smooth but
    biased one: scored as delivered (smoothed), the per-frame member gets the weight; raw, the other."""
    from abaw.pipeline.blend_weights import fit_weights

    rng = np.random.default_rng(0)
    n_v, length = 6, 120
    n = n_v * length
    vid = np.repeat(np.arange(n_v), length).astype(np.int32)
    t = np.tile(np.arange(length), n_v)
    truth = (0.6 * np.sin(2 * np.pi * (t[:, None] / 60.0 + vid[:, None] * np.array([0.13, 0.37])
                                       + np.array([0, 0.25])))).astype(np.float32)
    noisy = np.clip(truth + rng.normal(0, 0.6, (n, 2)), -1, 1).astype(np.float32)
    smooth_biased = (0.5 * truth + 0.25 * np.roll(truth, 7, 0) + 0.15).astype(np.float32)
    tmpl = FrameOutputs(tuple(f"v{i}" for i in range(n_v)), vid, (t + 1).astype(np.int32))
    labels = Labels(truth, np.full(n, -1, np.int64), np.full((n, 12), -1, np.int8), np.ones(n, bool),
                    np.zeros(n, bool), np.zeros(n, bool))

    def weights(smoothing: bool) -> tuple[float, ...]:
        data = BlendData(tmpl, np.arange(n), labels, {"va": [noisy, smooth_biased]}, {"va": ["noisy", "smooth"]},
                         CrossfitConfig(windows=(1, 9, 25), kernels=("box", "median"), smoothing=smoothing))
        return fit_weights(data, np.arange(n), "prob", 10)["va"]

    raw, smoothed = weights(False), weights(True)
    assert raw[0] < 0.5 < smoothed[0] and smoothed[0] - raw[0] >= 0.3, (raw, smoothed)


def test_per_column_weights_combine_each_column_on_its_own():
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 12)), rng.random((5, 12))
    w = np.zeros((2, 12))
    w[0, :6], w[1, 6:] = 1.0, 1.0  # AUs 1-6 from a, the others from b
    for space in ("prob", "logit"):
        got = combine("au", [a, b], w, space)
        np.testing.assert_allclose(got[:, :6], a[:, :6], atol=1e-6)
        np.testing.assert_allclose(got[:, 6:], b[:, 6:], atol=1e-6)
        np.testing.assert_allclose(combine("au", [a, b], np.full((2, 12), 0.5), space),
                                   combine("au", [a, b], (0.5, 0.5), space), atol=1e-6)
    for bad, msg in ((np.full((2, 11), 0.5), "11 weights per run for 12"),
                     (np.full((2, 12), 0.6), "summing to 1")):
        with pytest.raises(AbawError, match=msg):
            combine("au", [a, b], bad)
    with pytest.raises(AbawError, match="EXPR classes share one weight"):
        combine("expr", [a[:, :8], b[:, :8]], np.full((2, 8), 0.5))


def _au_members(seed: int = 0):
    """Six videos; member A knows AUs 1-6 (noise on 7-12), member B the reverse."""
    rng = np.random.default_rng(seed)
    n_v, length = 6, 80
    n = n_v * length
    vid = np.repeat(np.arange(n_v), length).astype(np.int32)
    t = np.tile(np.arange(length), n_v)
    au = (rng.random((n, 12)) < 0.3).astype(np.int8)
    good = np.clip(0.25 + 0.5 * au + 0.1 * rng.standard_normal((n, 12)), 0.01, 0.99)
    noise = rng.random((n, 12))
    a = np.where(np.arange(12) < 6, good, noise).astype(np.float32)
    b = np.where(np.arange(12) < 6, noise, good).astype(np.float32)
    tmpl = FrameOutputs(tuple(f"v{i}" for i in range(n_v)), vid, (t + 1).astype(np.int32))
    labels = Labels(np.zeros((n, 2), np.float32), np.full(n, -1, np.int64), au, np.zeros(n, bool),
                    np.zeros(n, bool), np.ones(n, bool))
    return BlendData(tmpl, np.arange(n), labels, {"au": [a, b]}, {"au": ["A", "B"]},
                     CrossfitConfig(windows=(1,), kernels=("box",)))


def test_per_au_weights_take_each_au_from_the_member_that_knows_it():
    from abaw.pipeline.blend_weights import fit_weights

    data = _au_members()
    shared = fit_weights(data, np.arange(len(data.rows)), "prob", 10, au_folds=3)["au"]
    per_au = fit_weights(data, np.arange(len(data.rows)), "prob", 10, au_folds=3, per_au=True)["au"]
    assert all(np.ndim(w) == 0 for w in shared)
    wa, wb = np.asarray(per_au[0]), np.asarray(per_au[1])
    assert wa.shape == (12,) and np.allclose(wa + wb, 1)
    assert (wa[:6] >= 0.7).all() and (wa[6:] <= 0.3).all(), per_au
    fits = {mode: evaluate_blend(data, BlendConfig(au_weights=mode, folds=3)) for mode in ("task", "per-au")}
    assert fits["per-au"].honest["au"] > fits["task"].honest["au"] + 0.1  # cross-fitted: not only in-sample
    with pytest.raises(AbawError, match="--au-weights"):
        BlendConfig(au_weights="each").validate()


def test_per_au_blend_file_predicts_and_exports(two_runs, tiny_synth, tmp_path):
    root, runs = two_runs
    out = cli("blend", runs["a"], runs["b"], "-o", tmp_path / "blend.json", "--steps", "4", "--au-weights", "per-au")
    assert "per AU" in out
    doc = json.loads((tmp_path / "blend.json").read_text())
    w = np.array([m["weight"] for m in doc["tasks"]["au"]["members"]])
    assert w.shape == (2, 12) and np.allclose(w.sum(0), 1)
    assert all(np.ndim(m["weight"]) == 0 for t in ("va", "expr") for m in doc["tasks"][t]["members"])
    from abaw.pipeline.blend import read_blend

    got = read_blend(tmp_path / "blend.json")["weights"]["au"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(doc["tasks"]["au"]["weights"]))
    out = cli("predict", "--compose", tmp_path / "blend.json", "--cache", root / "cache.zarr",
              "--test-list", tiny_synth / "MTL.txt", "--out", tmp_path / "sub.txt", "--quiet")
    cli("export-system", tmp_path / "blend.json", "-o", tmp_path / "system")
    manifest = json.loads((tmp_path / "system" / "system.json").read_text())
    assert manifest["blend"]["weights"]["au"] == doc["tasks"]["au"]["weights"]


def test_repeated_kfold_scores_each_frame_with_its_unseen_models(two_runs, tiny_synth, tmp_path):
    """--repeats 2: two partitions into folds; a frame's out-of-fold output is the mean of the two
    runs (one per partition) that did not train on it, and predict averages every run."""
    from abaw.data.labels import clip_of
    from abaw.pipeline.blend import Member, member_outputs
    from abaw.pipeline.blend_members import extrapolate, member_views

    root, _ = two_runs
    sets = ["temporal=none", "d_model=16", "window=8", "batch_frames=64", "epochs=2", "min_steps=0", "lr=0.003",
            "smooth_windows=[1,3]"]
    s = tmp_path / "s"
    args = ["search", "--cache", root / "cache.zarr", "--data", tiny_synth, "--out", s, "--backbones", "a",
            *[x for v in sets for x in ("--set", v)], "--compose", "blend", "--folds", 2, "--quiet"]
    assert "k-fold: every validation frame is scored by the one fold model" in cli(*args)
    assert "ensemble" not in json.loads((s / "composed.json").read_text())["scores"]  # one model per frame: no views
    out = cli(*args, "--repeats", 2)  # the first partition's runs are reused
    assert "x 4 split(s) (stratified folds) = 8 runs (4 already finished)" in out
    assert "with 1 unseen model(s) per frame" in out and "extrapolated to the 4 that predict averages" in out
    folds = json.loads((s / "folds.json").read_text())
    assert sorted(folds) == ["fold0", "fold1", "repeat1/fold0", "repeat1/fold1"]
    every = sorted(set(read_annotations(tiny_synth / FILES[0]).videos) | set(read_annotations(tiny_synth / FILES[1]).videos))
    both = Annotations.concat([read_annotations(tiny_synth / f) for f in FILES[:2]])
    assert json.loads((s / "search.json").read_text())["settings"]["stratify"] is True  # the default with --folds
    assert [folds["fold0"], folds["fold1"]] == kfold_videos(both, 2, 0, 0, stratify=True)
    assert [folds["repeat1/fold0"], folds["repeat1/fold1"]] == kfold_videos(both, 2, 0, 1, stratify=True)
    before = {p: p.read_bytes() for p in (s / "search.json", s / "folds.json", s / "leaderboard.json")}
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--repeats", "2", "--no-stratify"])  # other partitions
    assert r.exit_code == 1 and "folds were split otherwise (stratify True != False)" in r.output
    assert "rerun with --folds 2 --seed 0 --stratify" in r.output
    assert all(p.read_bytes() == b for p, b in before.items())  # refused before anything was written
    for part in ("", "repeat1/"):
        a, b = folds[f"{part}fold0"], folds[f"{part}fold1"]
        assert sorted(a + b) == every and not {clip_of(v) for v in a} & {clip_of(v) for v in b}
    board = json.loads((s / "leaderboard.json").read_text())
    row = next(r for r in board if r["overrides"].get("arch") != "linear")
    assert row["runs"][2:] == [f"runs/{row['config']}/repeat1/fold0", f"runs/{row['config']}/repeat1/fold1"]
    runs = [s / r for r in row["runs"]]
    oof = member_outputs(Member("m", tuple(runs), ("va", "expr", "au")))[0]
    views = member_views(Member("m", tuple(runs), ("va", "expr", "au")), honest=False)
    assert (views.per_frame, views.predict) == (2, 4) and len(views.outputs) == 2
    assert member_views(Member("m", tuple(runs[:2]), ("va", "expr", "au"))) is None  # one run per frame
    loaded = [FrameOutputs.load(r / "val_outputs.npz") for r in runs]
    for i in (0, 40, len(oof) - 1):  # each frame: the mean of the runs that validated it, one per partition
        video, frame = oof.videos[oof.video_idx[i]], oof.frame[i]
        seen = [o.au[(np.asarray(o.videos)[o.video_idx] == video) & (o.frame == frame)] for o in loaded]
        seen = [x[0] for x in seen if len(x)]
        assert len(seen) == 2 and np.allclose(oof.au[i], np.mean(seen, 0), atol=1e-6)
        picked = sorted((v.au[i] for v in views.outputs), key=lambda a: a.tolist())  # the views: one run each
        assert np.allclose(picked, sorted(seen, key=lambda a: a.tolist()), atol=1e-6)
    doc = json.loads((s / "composed.json").read_text())
    ens, honest = doc["scores"]["ensemble"], doc["scores"]["honest"]
    assert ens["models"] == {"view": 1, "honest": 2, "predict": 4}
    assert np.isclose(ens["total"], extrapolate(ens["views"]["total"], honest["total"], 1, 2, 4))
    assert all(len(e["runs"]) == 2 * 4 for e in doc["tasks"].values())  # the config and the linear probe, 4 runs each
    assert sum(len(f) for f in doc["folds"]["videos"]) == len(every)
    # abaw report: each config on its first partition's folds, the blend as composed.json scores it
    rep = cli("report", s, "--out", tmp_path / "rep")
    line = next(x for x in rep.splitlines() if x.startswith("composed blend"))
    assert f"P_MTL {doc['total']:.4f}" in line and (tmp_path / "rep" / "report.html").is_file()
    assert f"honest: P_MTL {honest['total']:.4f} ± {honest['se']:.4f}" in rep  # beside the fitted score
    assert f"extrapolated: repeated k-fold: honest {ens['views']['total']:.4f}" in rep
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"extrapolated to the 4 that predict averages: {ens['total']:.4f}" in page
    out = cli("predict", "--compose", s, "--cache", root / "cache.zarr", "--test-list", tiny_synth / "MTL.txt",
              "--out", tmp_path / "sub.txt", "--quiet")
    assert (tmp_path / "sub.txt").read_text().count("\n") > 1
    assert f"runs/{row['config']} (4 fold runs, x" in out  # the system line: one entry per k-fold config
    r = CliRunner().invoke(main, ["search", "--cache", str(root / "cache.zarr"), "--data", str(tiny_synth),
                                  "--out", str(tmp_path / "t"), "--repeats", "2"])
    assert r.exit_code == 1 and "--repeats" in r.output and not (tmp_path / "t" / "search.json").exists()
    r = CliRunner().invoke(main, ["search", "--cache", str(root / "cache.zarr"), "--data", str(tiny_synth),
                                  "--out", str(tmp_path / "t"), "--stratify"])
    assert r.exit_code == 1 and "--stratify needs --folds" in r.output and not (tmp_path / "t").exists()


def test_ensemble_extrapolation_predicts_the_score_of_a_larger_average():
    """score(n) = a - c/n holds exactly for the expected squared error of an average of n
    exchangeable noisy models; from 1- and 2-model averages, the 10-model score is predicted."""
    from abaw.pipeline.blend_members import extrapolate

    assert np.isclose(extrapolate(0.5 - 0.3, 0.5 - 0.3 / 2, 1, 2, 10), 0.5 - 0.3 / 10)
    assert np.isclose(extrapolate(0.7, 0.75, 2, 6, 6), 0.75)  # the target already measured
    rng = np.random.default_rng(0)
    y = rng.normal(size=200_000)
    models = y + 0.3 + rng.normal(scale=0.8, size=(10, y.size))  # shared bias, independent errors
    score = lambda n: -np.mean((models[:n].mean(0) - y) ** 2)  # noqa: E731
    s1 = np.mean([-np.mean((m - y) ** 2) for m in models])
    assert abs(extrapolate(s1, score(2), 1, 2, 10) - score(10)) < 0.01
    assert score(10) - score(2) > 0.2  # the gap it closes is large


def test_repeated_kfold_partitions_may_share_a_fold(tmp_path):
    """Two partitions of a small pool can put the same videos in one fold (seen at 24 tracks with
    stratified folds): those two runs validate identical frames, like seeds of one fold, yet every
    frame is still validated by two runs; the out-of-fold output is the mean of its two, and the
    first partition's runs label it."""
    from abaw.pipeline.blend_members import Member, member_outputs, member_views

    rng = np.random.default_rng(1)
    videos = ("v1", "v2", "v3", "v4", "v5", "v6")
    parts = [("a0", "v1 v2"), ("a1", "v3 v4"), ("a2", "v5 v6"), ("b0", "v1 v3"), ("b1", "v2 v4"), ("b2", "v5 v6")]
    runs, values = [], {}
    for name, vids in parts:
        keep = [videos.index(v) for v in vids.split()]
        out = FrameOutputs(videos, np.repeat(np.array(keep, np.int32), 3), np.tile(np.arange(3, dtype=np.int32), 2),
                           au=rng.random((6, 12), dtype=np.float32))
        (tmp_path / name).mkdir()
        out.save(tmp_path / name / "val_outputs.npz")
        runs.append(tmp_path / name)
        for i in range(len(out)):
            values.setdefault((videos[out.video_idx[i]], int(out.frame[i])), []).append(out.au[i])
    m = Member("m", tuple(runs), ("au",))
    oof, firsts = member_outputs(m)
    assert len(oof) == 18 and [r.name for r in firsts] == ["a0", "a1", "a2"]
    for i in range(len(oof)):
        pair = values[(videos[oof.video_idx[i]], int(oof.frame[i]))]
        assert len(pair) == 2 and np.allclose(oof.au[i], (pair[0] + pair[1]) / 2, atol=1e-6)
    views = member_views(m, honest=False)
    assert (views.per_frame, views.predict) == (2, 6)


def test_member_views_give_each_frame_one_unseen_run_per_view(tmp_path):
    """Two partitions of four videos into two folds: every frame is validated by two runs, one per
    partition; view j scores it with the j-th, their mean is the member's out-of-fold output."""
    from abaw.pipeline.blend_members import Member, member_outputs, member_views

    rng = np.random.default_rng(0)
    videos = ("v1", "v2", "v3", "v4")
    runs = []
    for name, vids in [("a0", "v1 v2"), ("a1", "v3 v4"), ("b0", "v1 v3"), ("b1", "v2 v4")]:
        keep = [videos.index(v) for v in vids.split()]
        idx = np.repeat(np.array(keep, np.int32), 5)
        out = FrameOutputs(videos, idx, np.tile(np.arange(0, 20, 4, dtype=np.int32), 2),
                           au=rng.random((10, 12), dtype=np.float32))
        (tmp_path / name).mkdir()
        out.save(tmp_path / name / "val_outputs.npz")
        runs.append(tmp_path / name)
    m = Member("m", tuple(runs), ("au",))
    views = member_views(m, honest=False)
    assert (views.per_frame, views.predict, len(views.outputs)) == (2, 4, 2)
    oof = member_outputs(m)[0]
    loaded = {r.name: FrameOutputs.load(r / "val_outputs.npz") for r in runs}

    def run_value(name, video, frame):
        o = loaded[name]
        hit = (np.asarray(o.videos)[o.video_idx] == video) & (o.frame == frame)
        return o.au[hit][0] if hit.any() else None

    for i in range(len(oof)):
        video, frame = oof.videos[oof.video_idx[i]], oof.frame[i]
        first = next(run_value(n, video, frame) for n in ("a0", "a1") if run_value(n, video, frame) is not None)
        second = next(run_value(n, video, frame) for n in ("b0", "b1") if run_value(n, video, frame) is not None)
        assert np.allclose(views.outputs[0].au[i], first) and np.allclose(views.outputs[1].au[i], second)
        assert np.allclose(oof.au[i], (first + second) / 2, atol=1e-6)
    assert member_views(Member("m", tuple(runs[:2]), ("au",)), honest=False) is None  # one run per frame
    with pytest.raises(AbawError, match="equally often"):
        member_views(Member("m", tuple(runs[:3]), ("au",)), honest=False)
