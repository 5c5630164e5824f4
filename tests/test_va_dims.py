"""V and A as separate targets: `--tasks au,v` trains valence only, scores it alone, predicts NaN arousal,
and composition takes V and A from different runs."""

from __future__ import annotations

from dataclasses import replace

import click
import numpy as np
import pytest
import torch

from abaw.cache.store import FeatureStore, load_features
from abaw.commands.options import parse_tasks
from abaw.data.labels import split_tasks, task_names
from abaw.errors import AbawError
from abaw.heads.losses import MultiTaskLoss
from abaw.metrics import mtl_score
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.loop import train
from abaw.pipeline.train.run import load_run, read_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(min_steps=0, d_model=16, heads=2, layers=1, lr=3e-3, window=16, batch_frames=128, epochs=3,
            temporal="none", smoothing=False, honest_folds=2, patience=100)


@pytest.fixture(scope="module")
def va_data(tmp_path_factory, synthetic_split):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("vadims") / "t.zarr"
    fs = FeatureStore(path, "a")
    proj = rng.standard_normal((22, 16)).astype(np.float32)
    tr = synthetic_split(fs, "t", 6, 80, proj, 2.0, rng)
    va = synthetic_split(fs, "v", 3, 80, proj, 2.0, rng)
    return tr, va, load_features(fs, ["synth"])


def test_task_names_parse_v_and_a_and_reject_junk():
    assert split_tasks(["au", "v"]) == (("au", "va"), ("valence",))
    assert split_tasks(["expr", "v", "a"]) == (("expr", "va"), ("valence", "arousal"))
    assert split_tasks(["a"]) == (("va",), ("arousal",))
    assert task_names(("au", "va"), ("valence",)) == ("au", "v")
    assert parse_tasks("AU, v") == ("au", "v") and parse_tasks("all") == ("va", "expr", "au")
    for junk in ("vv", "au,au", "", "va,x", "valence"):
        with pytest.raises(click.BadParameter):
            parse_tasks(junk)
    cfg = TrainConfig.create(tasks=("expr", "v", "a"))
    assert cfg.tasks == ("expr", "va") and cfg.va_dims == ("valence", "arousal") and cfg.task_names == ("expr", "va")
    cfg = TrainConfig.create(tasks=["au", "v"])
    assert cfg.flat()["tasks"] == ["au", "v"] and TrainConfig.from_dict(cfg.flat()) == cfg
    assert TrainConfig.from_dict({"tasks": ["va"]}).va_dims == ("valence", "arousal")  # old runs: both
    with pytest.raises(AbawError, match="tasks"):
        TrainConfig.create(tasks=["v", "x"])
    from abaw.pipeline.search.runner import config_from_overrides

    base = TrainConfig.create(tasks=("au", "v"))
    assert config_from_overrides(base, {"tasks": "v,au"}).task_names == ("au", "v")  # search spaces spell it so
    assert config_from_overrides(base, {"tasks": ["va", "expr"]}).va_dims == ("valence", "arousal")


def test_va_loss_on_the_trained_dimension_only():
    torch.manual_seed(0)
    pred = torch.rand(1, 50, 2, requires_grad=True)
    target = torch.rand(1, 50, 2)
    batch = {"va": target, "va_valid": torch.ones(1, 50, dtype=torch.bool)}
    for scale in ("mean", "sum"):
        loss = MultiTaskLoss(("va",), {"va": 1.0}, va_scale=scale, va_dims=("valence",))
        total, _ = loss({"va": pred}, batch)
        noisy = {**batch, "va": torch.cat([target[..., :1], torch.randn(1, 50, 1)], -1)}
        assert total.item() == pytest.approx(loss({"va": pred}, noisy)[0].item())
        assert total.item() == pytest.approx(1 - mtl_score(pred.detach()[0].numpy(), target[0].numpy()).valence,
                                             abs=1e-5)
        total.backward()
        assert pred.grad[..., 1].abs().sum() == 0 and pred.grad[..., 0].abs().sum() > 0
        pred.grad = None


def test_mtl_score_of_one_va_dimension_is_partial():
    rng = np.random.default_rng(0)
    true = rng.uniform(-1, 1, (40, 2))
    pred = true + 0.3 * rng.standard_normal((40, 2))
    full = mtl_score(pred, true)
    pred[:, 1] = np.nan
    part = mtl_score(pred, true)
    assert part.arousal is None and part.valence == pytest.approx(full.valence) and part.va == part.valence
    assert part.partial and not full.partial and "partial: VA scored on valence only" in part.format()


def test_v_only_run_trains_on_valence_scores_it_and_predicts_nan_arousal(va_data, tmp_path):
    tr, va, table = va_data
    cfg = TrainConfig.create(backbones=("synth",), tasks=("au", "v"), **TINY)
    run = train(cfg, table, tr, va, tmp_path / "v", progress=False)
    raw = run.result.val_raw
    assert raw["arousal"] is None and raw["valence"] is not None and raw["va"] == pytest.approx(raw["valence"])
    assert run.result.honest["arousal"] is None and run.result.honest["valence"] is not None
    assert "partial P_MTL" in run.result.format()
    # arousal labels replaced by noise: the same run (loss, selection and post-processing ignore arousal)
    rng = np.random.default_rng(1)
    noisy = [replace(a, va=np.stack([a.va[:, 0], rng.uniform(-1, 1, len(a))], 1).astype(np.float32))
             for a in (tr, va)]
    again = train(cfg, table, *noisy, tmp_path / "noisy", progress=False)
    assert again.result.val_raw == raw and again.result.steps == run.result.steps
    # reloads: V only recorded, predicts NaN arousal and real valence
    loaded = load_run(tmp_path / "v")
    assert read_config(tmp_path / "v").task_names == ("au", "v") and loaded.spec.va_dims == ("valence",)
    out = loaded.predict(table)
    assert np.isnan(out.va[:, 1]).all() and np.isfinite(out.va[:, 0]).all()
    np.testing.assert_array_equal(out.take(np.arange(3)).va[:, 0], out.va[:3, 0])


def _row(cid, tasks, folds=1, **scores):
    """A finished leaderboard row with honest = val scores `scores` (va, valence, arousal, au, ...) in each fold."""
    from abaw.pipeline.search.leaderboard import make_row

    rec = {**scores, "total": sum(v for k, v in scores.items() if k in ("va", "expr", "au"))}
    res = [{"run": f"r/{cid}/{i}", "result": {"val_final": rec, "val_raw": rec, "honest": rec}} for i in range(folds)]
    return make_row(cid, {}, tasks, res, [f"runs/{cid}"])


def test_compose_takes_valence_and_arousal_from_the_configs_best_on_each():
    from abaw.pipeline.search.leaderboard import compose_best_per_task, format_leaderboard, rank

    v_only = _row("v", ("au", "v"), va=0.6, valence=0.6, arousal=None, au=0.3)
    assert v_only["tasks"] == "au,v" and "P_MTL is partial" in format_leaderboard(rank([v_only]))
    a_only = _row("a", ("a",), va=0.5, valence=None, arousal=0.5)
    both = _row("both", ("va", "au"), va=0.45, valence=0.4, arousal=0.5 - 0.01, au=0.5)
    c = compose_best_per_task([v_only, a_only, both])
    assert {t: e["config"] for t, e in c["tasks"].items()} == {"valence": "v", "arousal": "a", "au": "both"}
    assert c["total"] == pytest.approx(0.6 / 2 + 0.5 / 2 + 0.5) and c["honest"] == pytest.approx(c["total"])
    assert "partial" not in c
    c = compose_best_per_task([v_only, both])
    assert c["tasks"]["valence"]["config"] == "v" and c["tasks"]["arousal"]["config"] == "both"
    c = compose_best_per_task([_row("x", ("va",), va=0.55, valence=0.7, arousal=0.4), v_only, both])
    assert c["tasks"]["valence"]["config"] == "x" and c["tasks"]["arousal"]["config"] == "both"
    c = compose_best_per_task([_row("x", ("va",), va=0.6, valence=0.7, arousal=0.5), v_only])
    assert c["tasks"]["va"] == {"config": "x", "score": 0.6, "runs": ["runs/x"], "honest": 0.6}  # one config
    c = compose_best_per_task([_row("x", ("va",), va=0.5, valence=0.7, arousal=0.3)])
    assert set(c["tasks"]) == {"va"} and c["tasks"]["va"]["score"] == pytest.approx(0.5)
    c = compose_best_per_task([v_only])  # nobody trained arousal: partial, valence worth all of P_VA
    assert set(c["tasks"]) == {"valence", "au"} and c["partial"] == ["arousal"]
    assert c["total"] == pytest.approx(0.6 + 0.3)
    old = _row("old", ("va",), va=0.5)  # results without per-dimension scores: VA composed whole
    assert set(compose_best_per_task([old])["tasks"]) == {"va"}


def test_nested_estimate_composes_va_per_dimension():
    from abaw.pipeline.search.leaderboard import nested_estimate

    rows = [_row("v", ("au", "v"), 3, va=0.6, valence=0.6, arousal=None, au=0.3),
            _row("a", ("a",), 3, va=0.5, valence=None, arousal=0.5)]
    n = nested_estimate(rows)
    assert n["composed"] == pytest.approx(0.6 / 2 + 0.5 / 2 + 0.3)
    assert all(p["valence"] == "v" and p["arousal"] == "a" and p["au"] == "v" for p in n["picks"])


@pytest.fixture(scope="module")
def v_and_a_runs(va_data, tmp_path_factory):
    tr, va, table = va_data
    root = tmp_path_factory.mktemp("vaeruns")
    cfgs = {"v": ("au", "v"), "a": ("a",), "both": ("va",)}
    runs = {k: train(TrainConfig.create(backbones=("synth",), tasks=t, **TINY), table, tr, va, root / "runs" / k,
                     progress=False) for k, t in cfgs.items()}
    return root, runs, table


def test_system_takes_valence_and_arousal_from_the_runs_that_trained_them(v_and_a_runs):
    from abaw.io import write_json
    from abaw.pipeline.predict.system import load_system, system_outputs

    root, runs, table = v_and_a_runs
    v = runs["v"].predict(table).va[:, 0]
    a = runs["a"].predict(table).va[:, 1]
    system = load_system([str(root / "runs" / "v"), str(root / "runs" / "a")])
    out, _, _ = system_outputs(system, table, postprocess="none")
    np.testing.assert_allclose(out.va, np.stack([v, a], 1), rtol=1e-6)  # each dimension from its own run
    assert system.missing_va_dims() == [] and "valence" in system.describe()
    # composed per dimension: valence from v, arousal from `both` (which trained both)
    write_json(root / "composed.json", {"mode": "best-per-task", "tasks": {
        "valence": {"config": "v", "score": 0.5, "runs": ["runs/v"]},
        "arousal": {"config": "both", "score": 0.5, "runs": ["runs/both"]},
        "au": {"config": "v", "score": 0.5, "runs": ["runs/v"]}}})
    system = load_system(composed=root / "composed.json")
    out, _, _ = system_outputs(system, table, postprocess="none")
    np.testing.assert_allclose(out.va, np.stack([v, runs["both"].predict(table).va[:, 1]], 1), rtol=1e-6)
    # a V-only system: arousal is NaN, never a made-up value
    alone = load_system([str(root / "runs" / "v")])
    out, _, _ = system_outputs(alone, table, postprocess="none")
    assert np.isnan(out.va[:, 1]).all() and alone.missing_va_dims() == ["arousal"]
    write_json(root / "bad.json", {"mode": "best-per-task", "tasks": {
        "arousal": {"config": "v", "score": 0.5, "runs": ["runs/v"]}}})
    with pytest.raises(AbawError, match="composed for arousal but the run did not train it"):
        load_system(composed=root / "bad.json")


def test_blend_refuses_one_dimension_va_members(v_and_a_runs, tmp_path):
    from abaw.io import write_json
    from abaw.pipeline.blend import blend

    root, _, _ = v_and_a_runs
    with pytest.raises(AbawError, match="trained valence only; abaw blend needs VA members"):
        blend([str(root / "runs" / "v"), str(root / "runs" / "both")], tmp_path / "b.json")
    write_json(tmp_path / "composed.json", {"mode": "best-per-task", "tasks": {
        "valence": {"config": "v", "score": 0.5, "runs": [str(root / "runs" / "v")]}}})
    with pytest.raises(AbawError, match="composes VA per dimension"):
        blend([str(tmp_path / "composed.json")], tmp_path / "b.json")


def test_submission_of_a_v_only_system_marks_arousal_as_a_placeholder(v_and_a_runs, va_data, tmp_path):
    from abaw.data.submission import read_predictions
    from abaw.pipeline.predict.system import load_system, predict_test_list

    root, runs, table = v_and_a_runs
    _, va, _ = va_data
    lst = tmp_path / "test.txt"
    lst.write_text("image,valence,arousal,expression,aus\n" + "".join(f"{n}\n" for n in va.images()[:30]))
    res = predict_test_list(load_system([str(root / "runs" / "v")]), table.store, lst, tmp_path / "sub.txt")
    assert res.report["missing_va_dims"] == ["arousal"] and any("no run trained arousal" in w for w in res.warnings)
    sub = read_predictions(tmp_path / "sub.txt")
    assert (sub.va[:, 1] == 0).all() and np.isfinite(sub.va[:, 0]).all() and sub.va[:, 0].std() > 0
