"""Pieces of the prediction pipeline: neighbour filling, search spaces, plots and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from abaw.errors import AbawError, FormatError
from abaw import plots
from abaw.pipeline.predict.fill import fill_rows, nearest_available
from abaw.pipeline.report.html import RunEvaluation, build_report
from abaw.pipeline.search.space import config_id, load_space, sample_configs, space_from_dict


def test_nearest_available_within_video_only():
    video = np.array(["a", "a", "a", "b", "a", "b", "c"])
    frame = np.array([5, 1, 3, 1, 9, 2, 1])
    avail = np.array([0, 1, 0, 0, 1, 0, 1], bool)
    # a/5 is 4 from a/1 and 4 from a/9: tie goes to the earlier frame; b has nothing
    assert nearest_available(video, frame, avail).tolist() == [1, 1, 1, -1, 4, -1, 6]


def test_fill_rows_counts_and_fallback():
    video = np.array(["a", "a", "a", "b"])
    frame = np.array([1, 2, 3, 1])
    avail = np.array([1, 0, 1, 0], bool)
    vals = {"va": np.array([[0.1, 0.1], [9, 9], [0.3, 0.3], [9, 9]]), "expr": np.array([4, -1, 5, -1])}
    out, n_nb, n_fb = fill_rows(vals, video, frame, avail, {"va": np.zeros(2), "expr": 0})
    assert out["va"].tolist() == [[0.1, 0.1], [0.1, 0.1], [0.3, 0.3], [0, 0]]
    assert out["expr"].tolist() == [4, 4, 5, 0] and (n_nb, n_fb) == (1, 1)


def test_space_sampling_is_deterministic_and_budgeted(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text("base: {epochs: 2}\ngrid:\n  tasks: [[au], [expr], [va]]\n  temporal: [none, tcn]\n"
                 "random:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  window: [8, 16]\n")
    space = load_space(p)
    assert space.grid_size() == 6
    all_cfgs = sample_configs(space, seed=0)
    assert len(all_cfgs) == 6 and all(c["epochs"] == 2 and 1e-4 <= c["lr"] <= 1e-2 for c in all_cfgs)
    some = sample_configs(space, budget=3, seed=0)
    assert len(some) == 3 and some == sample_configs(space, budget=3, seed=0)
    assert len({config_id(c) for c in all_cfgs}) == 6
    only_random = sample_configs(space_from_dict({"random": {"d_model": {"int": [8, 16]}}}), budget=4, seed=1)
    assert len(only_random) == 4 and all(8 <= c["d_model"] <= 16 for c in only_random)


def test_space_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  tasks: [au\n")
    with pytest.raises(FormatError, match="cannot parse"):
        load_space(bad)
    with pytest.raises(AbawError, match="unknown sections"):
        space_from_dict({"grids": {}})
    with pytest.raises(AbawError, match="non-empty list"):
        space_from_dict({"grid": {"lr": []}})
    with pytest.raises(AbawError, match="low <= high"):
        space_from_dict({"random": {"lr": {"uniform": [2, 1]}}})
    with pytest.raises(AbawError, match="more than one section"):
        space_from_dict({"base": {"lr": 1}, "grid": {"lr": [1, 2]}})


def _evaluation(name, noise, seed=0):
    rng = np.random.default_rng(seed)
    n = 300
    vt = np.clip(np.cumsum(rng.normal(0, 0.05, (n, 2)), 0), -1, 1)
    et = rng.integers(0, 8, n)
    at = rng.integers(0, 2, (n, 12))
    flip = rng.random((n, 12)) < noise
    return RunEvaluation(
        name=name, videos=np.array(["v1"] * 150 + ["v2"] * 150, dtype=object), frame=np.r_[1:151, 1:151],
        va_true=vt, va_valid=np.ones(n, bool), expr_true=et, expr_valid=np.arange(n) % 3 > 0, au_true=at,
        au_valid=np.ones(n, bool), va_pred=vt + rng.normal(0, noise, (n, 2)),
        expr_pred=np.where(rng.random(n) < noise, rng.integers(0, 8, n), et), au_pred=np.where(flip, 1 - at, at),
        info={"temporal": "tcn"})


def test_report_writes_pngs_html_and_scores(tmp_path):
    good, bad = _evaluation("good", 0.1), _evaluation("bad", 0.5)
    html = build_report([good, bad], tmp_path / "rep", title="compare")
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 7 and "compare" in text and "AU26" in text
    scores = json.loads((tmp_path / "rep" / "scores.json").read_text())
    assert scores["good"]["total"] > scores["bad"]["total"]
    for f in ["au_f1.png", "scores.png", "confusion_good.png", "va_scatter_bad.png", "va_traces_good.png"]:
        assert (tmp_path / "rep" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AbawError):
        build_report([], tmp_path / "empty")


def test_timeline_png(tmp_path):
    t = np.arange(60) / 30
    face = np.ones(60, bool)
    face[20:30] = False
    p = plots.timeline(tmp_path / "t.png", t, np.zeros((60, 2)), np.full((60, 8), 1 / 8), np.full((60, 12), 0.5),
                       face, title="clip")
    assert p.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- the leaderboard's honest ranking and nested estimate

def _row(cid, folds):
    """A finished leaderboard row whose honest scores per fold are `folds` (list of {task: score})."""
    from abaw.pipeline.search.leaderboard import make_row

    results = [{"run": f"r/{cid}/{i}", "result": {
        "val_final": {t: (v + 0.2 if v is not None else None) for t, v in f.items()},
        "val_raw": f, "honest": f}} for i, f in enumerate(folds)]
    return make_row(cid, {"config": cid}, ("va", "expr", "au"), results, [r["run"] for r in results])


def _f(va, expr, au):
    return {"va": va, "expr": expr, "au": au, "total": va + expr + au}


def test_rank_by_honest_and_nested_selection_never_scores_its_choice_folds():
    from abaw.pipeline.search.leaderboard import compose_best_per_task, nested_estimate, rank

    # "lucky" is best on fold 0 only (by far), "steady" is good everywhere.
    lucky = _row("lucky", [_f(0.9, 0.9, 0.9), _f(0.1, 0.1, 0.1), _f(0.1, 0.1, 0.1)])
    steady = _row("steady", [_f(0.4, 0.4, 0.4), _f(0.4, 0.4, 0.4), _f(0.4, 0.4, 0.4)])
    rows = rank([lucky, steady])
    assert [r["config"] for r in rows] == ["steady", "lucky"]  # honest means 1.2 vs 1.1
    n = nested_estimate(rows)
    # fold 0: chosen on folds 1-2 -> steady (1.2); folds 1, 2: chosen on 0 + the other -> lucky (1.5 vs 1.2)
    assert [p["best"] for p in n["picks"]] == ["steady", "lucky", "lucky"]
    assert n["best"] == pytest.approx((1.2 + 0.3 + 0.3) / 3)
    c = compose_best_per_task(rows)
    assert c["chosen_by"] == "honest" and c["honest"] == pytest.approx(1.2)
    assert c["total"] == pytest.approx(1.2 + 0.6)  # the optimistic val scores of the chosen configs
    assert nested_estimate([_row("a", [_f(0.1, 0.1, 0.1)] * 2)]) is None  # two folds: no nested estimate
    # repeated 3-fold (a second partition's runs appended): nested on the first partition's folds only
    again = rank([_row("lucky", lucky["honest_folds"] + [_f(0.9, 0.9, 0.9)] * 3),
                  _row("steady", steady["honest_folds"] + [_f(0.4, 0.4, 0.4)] * 3)])
    assert nested_estimate(again, 3) == n


def test_repeated_kfold_partitions_differ_are_balanced_and_keep_clips_together():
    from abaw.data.annotations import Annotations
    from abaw.data.labels import clip_of
    from abaw.pipeline.search.runner import kfold_videos

    rng = np.random.default_rng(0)
    names, sizes = [], []
    for c in range(40):  # 40 clips, a few with two tracks, 10-200 labelled frames each
        for side in (("_left", "_right") if c % 5 == 0 else ("",)):
            names.append(f"{c:03d}{side}")
            sizes.append(int(rng.integers(10, 200)))
    vid = np.repeat(np.arange(len(names), dtype=np.int32), sizes)
    frame = np.concatenate([np.arange(1, n + 1) for n in sizes]).astype(np.int64)
    n = len(frame)
    ann = Annotations(tuple(names), vid, frame, np.zeros((n, 2), np.float32), np.zeros(n, np.int64),
                      np.zeros((n, 12), np.int8))
    parts = [kfold_videos(ann, 5, seed=0, repeat=r) for r in range(3)]
    assert kfold_videos(ann, 5, seed=0, repeat=1) == parts[1]  # seeded
    for folds in parts:
        assert sorted(v for f in folds for v in f) == sorted(names)
        clips = [{clip_of(v) for v in f} for f in folds]
        assert all(not (a & b) for i, a in enumerate(clips) for b in clips[i + 1:])
        load = [sum(sizes[names.index(v)] for v in f) for f in folds]
        assert max(load) - min(load) <= 2 * 200  # about equal frame counts
    as_sets = [{frozenset(f) for f in folds} for folds in parts]
    assert as_sets[0] != as_sets[1] and as_sets[1] != as_sets[2]


def test_stratified_kfold_spreads_a_rare_class_and_keeps_frames_balanced():
    """`--stratify`: a class held by few clips is spread over the folds (frame-only balancing can put
    most of it in one fold, whose own model then barely sees it); clips stay whole, frames stay even."""
    from abaw.data.annotations import Annotations
    from abaw.data.labels import clip_of
    from abaw.pipeline.search.runner import kfold_videos

    worst = {False: [], True: []}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        names, sizes, rare = [], [], []
        for c in range(40):
            for side in (("_left", "_right") if c % 7 == 0 else ("",)):
                names.append(f"{c:03d}{side}")
                sizes.append(int(rng.integers(50, 300)))
                rare.append(c % 8 == 3)  # 5 clips hold the rare class (in a run of 40 frames)
        vid = np.repeat(np.arange(len(names), dtype=np.int32), sizes)
        n = len(vid)
        expr = np.full(n, 4, np.int64)
        au = np.zeros((n, 12), np.int8)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for i, s0 in enumerate(starts):
            if rare[i]:
                expr[s0:s0 + 40] = 6
                au[s0:s0 + 40, 9] = 1
        frame = np.concatenate([np.arange(1, m + 1) for m in sizes]).astype(np.int64)
        ann = Annotations(tuple(names), vid, frame, np.zeros((n, 2), np.float32), expr, au)
        for strat in (False, True):
            folds = kfold_videos(ann, 5, seed=seed, stratify=strat)
            assert sorted(v for f in folds for v in f) == sorted(names)
            clips = [{clip_of(v) for v in f} for f in folds]
            assert all(not (a & b) for i, a in enumerate(clips) for b in clips[i + 1:])
            load = [sum(sizes[names.index(v)] for v in f) for f in folds]
            assert max(load) - min(load) <= 2 * 2 * 300  # about equal frame counts, stratified too
            held = [sum(40 for v in f if rare[names.index(v)]) for f in folds]
            worst[strat].append(max(held) / sum(held))
        assert kfold_videos(ann, 5, seed=seed, stratify=True) == kfold_videos(ann, 5, seed=seed, stratify=True)
    assert max(worst[True]) <= 0.4  # the 5 rare clips' frames (6 with a two-track clip) spread: at most 2 per fold
    assert np.mean(worst[True]) < np.mean(worst[False])


def test_a_search_rerun_must_split_its_folds_as_before(tmp_path):
    """Stratified folds are the default with --folds; a rerun that would partition the videos otherwise
    (another fold count, seed or stratification) is refused with the flags that resume it, and a search
    saved before `stratify` existed counts as unstratified; more --repeats or no folds pass."""
    from dataclasses import replace

    from abaw.pipeline.search.runner import SearchSettings, check_splits

    now = SearchSettings(folds=5, repeats=2, seed=3)
    assert now.stratify is None  # resolved by run_search: stratified with folds, off without
    stratified = replace(now, stratify=True)
    check_splits(tmp_path, {"folds": 5, "repeats": 1, "stratify": True, "seed": 3}, stratified)  # more repeats
    check_splits(tmp_path, {"folds": 0}, replace(now, folds=0, stratify=False))
    for saved, hint in (({"folds": 5, "repeats": 2, "seed": 3}, "--folds 5 --seed 3 --no-stratify"),  # an old search
                        ({"folds": 5, "stratify": True, "seed": 4}, "--folds 5 --seed 4 --stratify"),
                        ({"folds": 0, "seed": 3}, "--folds 0 --seed 3 or")):
        with pytest.raises(AbawError, match="cannot rerun the search, its folds were split otherwise") as e:
            check_splits(tmp_path, saved, stratified)
        assert hint in str(e.value) and str(tmp_path) in str(e.value)


def test_report_page_contents_differences_curves_provenance_and_no_reprs(tmp_path, synthetic_split, one_thread):
    """A report on two tiny runs that differ in the temporal model: contents with anchors, the differing
    setting (and the common ones collapsed), linked training curves, provenance, no Python repr."""
    from abaw.cache.store import FeatureStore, load_features
    from abaw.io import read_json
    from abaw.pipeline.report import report
    from abaw.pipeline.train import train
    from abaw.pipeline.train.config import TrainConfig

    rng = np.random.default_rng(0)
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    proj = rng.standard_normal((22, 12)).astype(np.float32)
    tr, va = synthetic_split(fs, "t", 3, 40, proj, 1.0, rng), synthetic_split(fs, "v", 2, 40, proj, 1.0, rng)
    table = load_features(fs, ["synth"])
    runs = []
    for temporal in ("none", "transformer"):
        cfg = TrainConfig.create(temporal=temporal, epochs=1, min_steps=0, d_model=16, window=8, batch_frames=64,
                                 honest_folds=0, smooth_windows=(1, 3))
        train(cfg, table, tr, va, tmp_path / temporal, progress=False)
        runs.append(str(tmp_path / temporal))
    res = report(runs, tmp_path / "rep", val_ann=va, title="two runs")
    text = (tmp_path / "rep" / "report.html").read_text()
    for anchor in ("scores", "differs", "curves", "provenance", "run-none", "run-transformer"):
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text
    differs = text.split('id="differs"')[1].split("</section>")[0]
    before_common = differs.split("<details>")[0]
    assert "<td>temporal</td><td>none</td><td>transformer</td>" in before_common
    assert "<td>d_model</td>" not in before_common and "<td>d_model</td><td>16</td>" in differs  # common, collapsed
    for name in ("curves_none.png", "curves_transformer.png"):  # copied beside the page, linked relatively
        assert f'src="{name}"' in text and (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
    prov = text.split('id="provenance"')[1]
    labels_sha = read_json(tmp_path / "none" / "data.json")["identity"]["annotations"]["val"]["sha256"]
    assert "abaw version" in prov and "python API" in prov and " UTC" in prov and labels_sha in prov
    for bad in ("{'", "[(", "None", "array(", "PostProcess("):
        assert bad not in text, bad
    assert [n for n, _ in res.scores] == ["none", "transformer"]


def test_report_leaderboard_section_and_formatter(tmp_path):
    from abaw.io import write_json
    from abaw.pipeline.report.sections import leaderboard_section, show

    assert show(None) == "\u2013" and show(0.123456) == "0.1235" and show([1, 2.5]) == "1, 2.5000"
    assert show({"a": None, "b": (1, 2)}) == "a=\u2013, b=(1, 2)" and show(np.float32(1e-5)) == "1e-05"
    rows = [{**_row("c1", [_f(0.5, 0.4, 0.6)]), "overrides": {"temporal": "none", "lr": 1e-3, "tasks": "va"}},
            {**_row("c2", [_f(0.3, 0.4, 0.6)]), "overrides": {"temporal": "transformer", "lr": 1e-3}},
            {"config": "c3", "overrides": {"arch": "linear"}, "tasks": "au", "runs": [], "error": "boom <x>"}]
    for i, r in enumerate(rows):
        r["rank"] = i + 1 if "val" in r else None
    write_json(tmp_path / "leaderboard.json", rows)
    page = leaderboard_section(tmp_path)
    assert "<td>temporal=none</td>" in page and "<td>temporal=transformer</td>" in page  # lr equal: not shown
    assert "<td>arch=linear</td>" in page and "boom &lt;x&gt;" in page and "None" not in page
    assert "<td>1.5000</td>" in page  # c1's honest P_MTL


def test_fold_config_names_the_config_of_k_fold_runs():
    from pathlib import Path

    from abaw.pipeline.predict.system import fold_config

    assert fold_config(Path("s/runs/abc/fold0")) == Path("s/runs/abc")
    assert fold_config(Path("s/runs/abc/repeat2/fold4")) == Path("s/runs/abc")
    assert fold_config(Path("runs/joint")) is None
