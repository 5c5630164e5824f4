"""Joint head training: temporal gain, reproducibility, resume, init-from, fusions, CLI on synth."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from abaw.cache.store import FeatureStore, load_features
from abaw.cli import main
from abaw.data.annotations import read_annotations
from abaw.errors import AbawError
from abaw.heads.model import build_model
from abaw.metrics import mtl_score
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.dataset import align_labels
from abaw.pipeline.train.init import init_from_runs
from abaw.pipeline.train.loop import train
from abaw.pipeline.train.postprocess import score_against
from abaw.pipeline.train.run import load_checkpoint, load_run

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "timm:test_efficientnet_gn?size=112&pretrained=0"
SMALL = dict(min_steps=0, d_model=32, heads=2, layers=2, lr=3e-3, window=16, batch_frames=256, smoothing=False, patience=100)


@pytest.fixture(scope="module")
def temporal_data(tmp_path_factory, synthetic_split):
    """Features = a fixed linear view of smooth labels + heavy per-frame noise (two backbones)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cache") / "t.zarr"
    fs = FeatureStore(path, "a")
    proj = rng.standard_normal((22, 32)).astype(np.float32)
    tr = synthetic_split(fs, "t", 10, 150, proj, 4.0, rng)
    va = synthetic_split(fs, "v", 4, 150, proj, 4.0, rng)
    proj2 = rng.standard_normal((22, 24)).astype(np.float32)
    for ann in (tr, va):  # a second, weaker "backbone" for the fusion tests
        for v in ann.videos:
            lab = np.concatenate([ann.va[ann.video_slice(v)], np.eye(8)[ann.expr[ann.video_slice(v)]],
                                  ann.au[ann.video_slice(v)]], 1)
            fs.write_features(v, "second", lab @ proj2 + 6.0 * rng.standard_normal((len(lab), 24)),
                              {"spec": "synthetic:second", "dim": 24, "preprocess": {}, "weights_sha256": "1"})
    return path, tr, va, load_features(fs, ["synth", "second"])


def test_temporal_modules_beat_no_temporal_context(temporal_data, tmp_path):
    _, tr, va, table = temporal_data
    scores = {}
    for temporal in ("none", "transformer", "tcn", "gru", "lstm"):
        cfg = TrainConfig.create(backbones=("synth",), temporal=temporal, epochs=8, **SMALL)
        run = train(cfg, table, tr, va, tmp_path / temporal, progress=False)
        scores[temporal] = run.result["val_final"]["total"]  # after AU thresholds, no smoothing
    for temporal in ("transformer", "tcn", "gru", "lstm"):
        assert scores[temporal] > scores["none"] + 0.05, scores


def _same_history(a, b):
    keys = ("train_loss", "val_loss", "lr")
    return [(h["epoch"], h["val"], [h[k] for k in keys]) for h in a] == \
        [(h["epoch"], h["val"], [h[k] for k in keys]) for h in b]


def test_same_seed_same_run_and_resume_after_interruption(temporal_data, tmp_path):
    path, tr, va, _ = temporal_data
    cfg = TrainConfig.create(backbones=("synth",), temporal="transformer", epochs=3, **SMALL)
    a = train(cfg, path, tr, va, tmp_path / "a", progress=False)

    def stop(rec):
        if rec["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, tr, va, tmp_path / "b", progress=False, on_epoch=stop)
    assert (tmp_path / "b" / "last.pt").exists() and not (tmp_path / "b" / "result.json").exists()
    with pytest.raises(AbawError, match="not finished"):
        load_run(tmp_path / "b")
    with pytest.raises(AbawError, match="already holds a run"):
        train(cfg, path, tr, va, tmp_path / "b", progress=False)
    with pytest.raises(AbawError, match="config differs: lr"):
        train(cfg.with_(lr=1e-3), path, tr, va, tmp_path / "b", resume=True, progress=False)
    b = train(cfg, path, tr, va, tmp_path / "b", resume=True, progress=False)
    assert len(b.history) == 3 and _same_history(a.history, b.history)
    assert a.result["steps"] == b.result["steps"]
    sa, sb = load_checkpoint(tmp_path / "a" / "best.pt")[1], load_checkpoint(tmp_path / "b" / "best.pt")[1]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not (tmp_path / "b" / "last.pt").exists()
    # a finished run is returned as is by --resume; another seed gives other numbers
    again = train(cfg, path, tr, va, tmp_path / "b", resume=True, progress=False)
    assert again.result == b.result
    c = train(cfg.with_(seed=1), path, tr, va, tmp_path / "c", progress=False)
    assert not _same_history(a.history, c.history)


def test_init_from_single_task_runs(temporal_data, tmp_path):
    _, tr, va, table = temporal_data
    base = dict(backbones=("synth",), temporal="tcn", epochs=1, **SMALL)
    au = train(TrainConfig.create(tasks=("au",), **base), table, tr, va, tmp_path / "au", progress=False)
    v = train(TrainConfig.create(tasks=("va",), **{**base, "backbones": ("second", "synth")}), table, tr, va,
              tmp_path / "va", progress=False)
    joint_cfg = TrainConfig.create(**{**base, "backbones": ("synth", "second")})
    spec = joint_cfg.model_spec(("synth", "second"), (32, 24))
    model = build_model(spec)
    report = init_from_runs(model, spec, (str(au.path), str(v.path)))
    sd = model.state_dict()
    au_sd, va_sd = au.model.state_dict(), v.model.state_dict()
    assert torch.equal(sd["heads.au.weight"], au_sd["heads.au.weight"])
    assert torch.equal(sd["heads.va.weight"], va_sd["heads.va.weight"])
    # projections follow the backbone key: 'second' was input 0 of the VA run, is input 1 here
    assert torch.equal(sd["proj.1.1.weight"], va_sd["proj.0.1.weight"])
    assert torch.equal(sd["proj.0.1.weight"], au_sd["proj.0.1.weight"])  # first run wins for 'synth'
    assert torch.equal(sd["temporal.blocks.0.conv.weight"], au_sd["temporal.blocks.0.conv.weight"])
    assert "heads.expr.weight" in report["fresh"] and report["loaded"] > 10
    run = train(joint_cfg.with_(init_from=(str(au.path), str(v.path))), table, tr, va, tmp_path / "joint",
                progress=False)
    info = json.loads((run.path / "data.json").read_text())["init_from"]
    assert [r["tasks"] for r in info["runs"]] == [["au"], ["va"]]
    with pytest.raises(AbawError, match="not a finished run"):
        train(joint_cfg.with_(init_from=(str(tmp_path),)), table, tr, va, tmp_path / "bad", progress=False)


@pytest.mark.parametrize("fusion", ["sum", "concat", "attention"])
def test_fusions_and_task_subsets(temporal_data, tmp_path, fusion):
    _, tr, va, table = temporal_data
    cfg = TrainConfig.create(backbones=("synth", "second"), fusion=fusion, temporal="none", tasks=("va", "expr"),
                      epochs=2, **SMALL)
    run = train(cfg, table, tr, va, tmp_path / fusion, progress=False)
    assert run.spec.keys == ("synth", "second") and run.tasks == ("va", "expr")
    out = run.predict(table)
    assert out.au is None and out.expr.shape == (len(table), 8)
    assert np.allclose(out.expr.sum(1), 1, atol=1e-5) and np.abs(out.va).max() <= 1
    assert run.result["val_final"]["au"] is None and run.result["val_final"]["expr"] > 0


def test_missing_features_error_or_skip(tmp_path, synthetic_split):
    rng = np.random.default_rng(5)
    fs = FeatureStore(tmp_path / "m.zarr", "a")
    proj = rng.standard_normal((22, 8))
    tr = synthetic_split(fs, "t", 3, 40, proj, 1.0, rng, drop=0.1)
    va = synthetic_split(fs, "v", 2, 40, proj, 1.0, rng)
    cfg = TrainConfig.create(epochs=1, **SMALL)
    with pytest.raises(AbawError, match=r"labelled training frames have no cached feature .* without a face"):
        train(cfg, fs, tr, va, tmp_path / "r", progress=False)
    run = train(cfg.with_(allow_missing=True), fs, tr, va, tmp_path / "r2", progress=False)
    miss = json.loads((run.path / "data.json").read_text())["train"]["missing"]
    assert miss["missing"] == miss["no_face"] > 0 and len(miss["examples"]) > 0
    with pytest.raises(AbawError, match="backbone 'nope' is not in the cache"):
        train(cfg.with_(backbones=("nope",)), fs, tr, va, tmp_path / "r3", progress=False)


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory, cache_crops):
    """A small `abaw synth` dataset and a cache of a random-init timm backbone's features."""
    from abaw.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, SynthConfig(seed=3, train_videos=8, val_videos=4, test_videos=1, min_frames=60, max_frames=100,
                               cue_noise=0.15, videos=False), jobs=1, progress=False)
    store = root.parent / "cache.zarr"
    key = cache_crops(root, store, SPEC)
    return root, store, key


def _chance(ann):
    """Scores of a predictor that draws labels from the right marginals but ignores the input."""
    p = np.random.default_rng(0).permutation(len(ann))
    return mtl_score(ann.va[p], ann.va, ann.va_valid & ann.va_valid[p], ann.expr[p], ann.expr,
                     ann.expr_valid & ann.expr_valid[p], ann.au[p], ann.au, ann.au_valid & ann.au_valid[p])


def test_cli_train_heads_on_synth_is_above_chance(synth_cache, tmp_path):
    root, store, key = synth_cache
    out = tmp_path / "run"
    args = ["train-heads", "--cache", str(store), "--data", str(root), "--out", str(out), "--backbone", SPEC,
            "--d-model", "64", "--window", "16", "--batch-frames", "128", "--epochs", "8", "--min-steps", "0", "--lr", "3e-3",
            "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "raw" in r.output and "smoothing" in r.output and "au_thresholds" in r.output
    for name in ("config.json", "data.json", "metrics.json", "best.pt", "val_outputs.npz", "postprocess.json",
                 "curves.png", "result.json"):
        assert (out / name).exists(), name
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert list(ckpt["spec"]["keys"]) == [key]
    res = json.loads((out / "result.json").read_text())
    val = read_annotations(root / "validation_set_annotations.txt")
    chance = _chance(val)
    final = res["val_final"]
    assert final["va"] > chance.va + 0.25 and final["expr"] > chance.expr + 0.05 and final["au"] > chance.au + 0.1
    assert final["total"] > chance.total + 0.5, (final, chance.to_dict())
    assert final["total"] >= res["val_raw"]["total"]
    # the saved run predicts the same validation outputs and reproduces its score
    run = load_run(out)
    table = load_features(store, [key])
    fs = align_labels(table, val)
    outputs = run.predict(fs)
    np.testing.assert_allclose(outputs.au, run.val_outputs().au, atol=1e-6)
    assert score_against(outputs, val, run.postprocess).total == pytest.approx(final["total"], abs=1e-9)
    # the run directory is refused without --resume/--overwrite; a bad option is a one-line error
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 1 and "already holds a run" in r2.output
    r3 = CliRunner().invoke(main, args[:-1] + ["--overwrite", "--temporal", "rnn"])
    assert r3.exit_code == 1 and "unknown temporal module 'rnn'" in r3.output


def test_old_flat_run_configs_still_load(tmp_path):
    """Run folders written before TrainConfig nested the ModelSpec keep loading (and resuming)."""
    from abaw.io import write_json
    from abaw.pipeline.train import read_config

    cfg = TrainConfig.create(temporal="tcn", d_model=64, tasks=("au",), epochs=3, min_steps=0)
    write_json(tmp_path / "config.json", {"abaw_run": 1, "config": cfg.flat()})  # the old layout
    assert read_config(tmp_path) == cfg
    write_json(tmp_path / "config.json", {"abaw_run": 1, "config": {**cfg.flat(), "colour": 1}})
    with pytest.raises(AbawError, match="config.json: cannot read the run config.*colour"):
        read_config(tmp_path)


def test_configs_load_from_json_files(tmp_path):
    from abaw.config import load_config, to_dict
    from abaw.errors import FormatError
    from abaw.io import write_json

    cfg = TrainConfig.create(temporal="gru", lr=1e-3)
    write_json(tmp_path / "nested.json", to_dict(cfg))
    write_json(tmp_path / "flat.json", {"temporal": "gru", "lr": 1e-3})
    assert load_config(TrainConfig, tmp_path / "nested.json") == cfg == load_config(TrainConfig, tmp_path / "flat.json")
    (tmp_path / "bad.json").write_text('{"lr": 1e-3,\n oops}')
    with pytest.raises(FormatError, match=r"bad.json:2: not JSON"):
        load_config(TrainConfig, tmp_path / "bad.json")
    write_json(tmp_path / "typo.json", {"lrr": 1})
    with pytest.raises(FormatError, match=r"typo.json: TrainConfig: unknown config keys \['lrr'\]"):
        load_config(TrainConfig, tmp_path / "typo.json")


def test_select_task_keeps_each_tasks_best_epoch(temporal_data, tmp_path):
    """select=task: every task is predicted by the weights of its own best raw validation epoch."""
    _, tr, va, table = temporal_data
    cfg = TrainConfig.create(backbones=("synth",), epochs=6, au_thresholds=False, honest_folds=2, select="task",
                             **SMALL)
    run = train(cfg, table, tr, va, tmp_path / "r", progress=False)
    hist = json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs"]
    epochs = run.result.task_epochs
    assert set(epochs) == {"va", "expr", "au"}
    raw = run.result.val_raw
    for t in ("va", "expr", "au"):
        scores = [h["val"][t] for h in hist]
        assert epochs[t] == 1 + int(np.argmax(scores))  # first epoch reaching the maximum
        assert raw[t] == pytest.approx(max(scores), abs=1e-6)
    assert not list((tmp_path / "r").glob("best-*.pt"))  # folded into best.pt
    loaded = load_run(tmp_path / "r")
    assert loaded.spec.snapshots == run.spec.snapshots
    again = loaded.predict(table, rows=align_labels(table, va).rows)
    saved = loaded.val_outputs()
    for t in ("va", "expr", "au"):
        np.testing.assert_allclose(getattr(again, t), getattr(saved, t), atol=1e-5)
    h = run.result.honest
    assert h and all(set(e) == {"va", "expr", "au"} for e in h["fold_epochs"])
    plain = replace(run.spec, snapshots=(0, 0, 0))
    rep = init_from_runs(build_model(plain), plain, (str(tmp_path / "r"),))  # per-task checkpoint -> plain model
    assert rep["loaded"] > 0 and not rep["skipped_shape"]


def test_task_snapshots_take_each_task_from_its_copy():
    from abaw.heads.model import ModelSpec, combine_snapshots
    from abaw.pipeline.train.init import plain_state

    spec = ModelSpec(keys=("a",), dims=(6,), d_model=8, heads=2, layers=1)
    torch.manual_seed(0)
    models = [build_model(spec).eval() for _ in range(2)]
    states = {"va": models[0].state_dict(), "expr": models[1].state_dict(), "au": models[1].state_dict()}
    cspec, sd = combine_snapshots(spec, states, {"va": 3, "expr": 7, "au": 7})
    assert cspec.snapshots == (0, 1, 1)
    combined = build_model(cspec).eval()
    combined.load_state_dict(sd)
    x, mask = [torch.randn(2, 5, 6)], torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out, o0, o1 = combined(x, mask), models[0](x, mask), models[1](x, mask)
    torch.testing.assert_close(out["va"], o0["va"])
    torch.testing.assert_close(out["expr"], o1["expr"])
    torch.testing.assert_close(out["au"], o1["au"])
    assert set(combined.heads) == {"va", "expr", "au"} and combined.heads["au"].out_features == 12
    pspec, psd = plain_state(cspec, sd)  # trunk from the copy most tasks use, heads from their own
    assert pspec.snapshots == (0, 0, 0)
    torch.testing.assert_close(psd["heads.va.weight"], states["va"]["heads.va.weight"])
    trunk = [k for k in psd if not k.startswith("heads.")]
    assert trunk and all(torch.equal(psd[k], states["expr"][k]) for k in trunk)
    one, sd1 = combine_snapshots(spec, states, {"va": 7, "expr": 7, "au": 7})
    assert one.snapshots == (0, 0, 0) and set(sd1) == set(models[0].state_dict())
