"""Settings files (`train-heads --config`, `--write-default-config`) and the recipes in
recipes/: each runs end to end on tiny `abaw synth` data, with `train-heads --config` and
with `abaw search --space`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.errors import FormatError
from abaw.pipeline.train import TrainConfig, read_config
from abaw.pipeline.train.settings import read_settings, resolve, write_settings

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # found from a fresh clone
NAMES = ("abaw7-winner", "hsemotion", "abaw4-aim3")
SPEC = "timm:test_efficientnet_gn?size=32&pretrained=0"
TINY = ["--epochs", "1", "--min-steps", "0", "--d-model", "32", "--layers", "1", "--batch-frames", "64", "--quiet"]


def test_written_defaults_read_back_and_flags_override_the_file(tmp_path):
    r = CliRunner().invoke(main, ["train-heads", "--write-default-config", str(tmp_path / "d.yaml")])
    assert r.exit_code == 0, r.output
    settings, notes = read_settings(tmp_path / "d.yaml")
    assert notes == [] and resolve(TrainConfig().flat(), settings, {}) == TrainConfig()
    f = tmp_path / "mine.yaml"
    f.write_text("tasks: au,va\nfusion: ffm\nlr: 1.0e-3\nepochs: 7\ntask_windows: [30, 5, 1]\n")
    out = tmp_path / "resolved.yaml"
    r = CliRunner().invoke(main, ["train-heads", "--config", str(f), "--epochs", "3", "--fusion", "sum",
                                  "--write-default-config", str(out)])
    assert r.exit_code == 0, r.output
    cfg = resolve(TrainConfig().flat(), read_settings(out)[0], {})
    assert cfg.tasks == ("au", "va") and cfg.model.task_windows == (30, 5, 1) and cfg.lr == 1e-3
    assert cfg.epochs == 3 and cfg.model.fusion == "sum"  # flags given explicitly win over the file
    write_settings(tmp_path / "again.yaml", cfg)
    assert resolve(TrainConfig().flat(), read_settings(tmp_path / "again.yaml")[0], {}) == cfg


def test_bad_settings_files_name_the_file_and_line(tmp_path, write):
    with pytest.raises(FormatError, match=r"bad.yaml:2: unknown setting 'lrr'"):
        read_settings(write("bad.yaml", "epochs: 2\nlrr: 1\n"))
    with pytest.raises(FormatError, match=r"typed.yaml:3: epochs: expected int, got str '3'"):
        read_settings(write("typed.yaml", "base:\n  lr: 0.1\n  epochs: '3'\n"))
    with pytest.raises(FormatError, match=r"mixed.yaml:2: mixes search-space sections"):
        read_settings(write("mixed.yaml", "base: {}\nlr: 1\n"))
    r = CliRunner().invoke(main, ["train-heads", "--config", str(write("tag.yaml", "lr: !!python/object:os.system x\n")),
                                  "--write-default-config", str(tmp_path / "x.yaml")])
    assert r.exit_code == 1 and "tag.yaml: not valid YAML" in r.output and not (tmp_path / "x.yaml").exists()
    r = CliRunner().invoke(main, ["train-heads", "--epochs", "2"])
    assert r.exit_code == 2 and "give --cache and --out" in r.output


@pytest.mark.parametrize("name", NAMES)
def test_recipes_are_search_spaces_and_configs(name):
    from abaw.pipeline.search.space import load_space, sample_configs

    path = RECIPES / f"{name}.yaml"
    space = load_space(path)
    assert len(sample_configs(space)) >= 2
    settings, notes = read_settings(path)
    cfg = resolve(TrainConfig().flat(), settings, {})
    assert cfg.validate() == cfg and "first grid value" in notes[0]
    expect = {"abaw7-winner": dict(fusion="ffm", temporal="lstm", causal=True, posenc=False,
                                   task_windows=(30, 5, 1), d_model=768),
              "hsemotion": dict(arch="linear"),
              "abaw4-aim3": dict(temporal="transformer", layers=4, fusion="concat")}[name]
    assert {k: getattr(cfg.model, k) for k in expect} == expect
    if name == "abaw7-winner":
        assert (cfg.va_loss, cfg.expr_class_weight, cfg.window, cfg.au_thresholds) == ("sum", "none", 30, False)
    if name == "abaw4-aim3":
        assert cfg.window == 64 and cfg.max_gap is None


@pytest.fixture(scope="module")
def recipe_cache(tiny_synth_dense, cache_crops, tmp_path_factory):
    store = tmp_path_factory.mktemp("recipes") / "cache.zarr"
    cache_crops(tiny_synth_dense, store, SPEC)
    return tiny_synth_dense, store


@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_end_to_end_on_synth(name, recipe_cache, tmp_path):
    root, store = recipe_cache
    recipe = str(RECIPES / f"{name}.yaml")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train-heads", "--config", recipe, "--cache", str(store), "--data", str(root),
                                  "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    run_settings = json.loads(json.dumps(read_config(out).flat()))  # the recipe's, except the flags given
    settings, _ = read_settings(recipe)
    assert {k: run_settings[k] for k in settings if k not in ("epochs", "d_model", "layers", "batch_frames")} == \
        {k: v for k, v in settings.items() if k not in ("epochs", "d_model", "layers", "batch_frames")}
    assert (run_settings["epochs"], run_settings["d_model"]) == (1, 32)
    res = json.loads((out / "result.json").read_text())
    assert res["val_final"]["total"] is not None
    # the same file as a search space (one config of its grid)
    s = CliRunner().invoke(main, ["search", "--space", recipe, "--cache", str(store), "--data", str(root),
                                  "--out", str(tmp_path / "search"), "--budget", "1", "--set", "epochs=1", "--set", "min_steps=0",
                                  "--set", "d_model=32", "--set", "layers=1", "--set", "batch_frames=64", "--quiet"])
    assert s.exit_code == 0, s.output
