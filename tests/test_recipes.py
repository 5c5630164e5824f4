"""Settings files (`train-heads --config`, `--write-default-config`) and the recipes shipped in
abaw/recipes/ (`abaw recipes`): each runs end to end on tiny `abaw synth` data, with
`train-heads --config` and with `abaw search --space`, by path and by name."""

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

RECIPES = Path(__file__).resolve().parents[1] / "abaw" / "recipes"  # package data, found from a fresh clone
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
    # the same recipe, by name, as a search space (one config of its grid)
    s = CliRunner().invoke(main, ["search", "--space", name, "--cache", str(store), "--data", str(root),
                                  "--out", str(tmp_path / "search"), "--budget", "1", "--set", "epochs=1", "--set", "min_steps=0",
                                  "--set", "d_model=32", "--set", "layers=1", "--set", "batch_frames=64", "--quiet"])
    assert s.exit_code == 0, s.output


def test_recipes_are_listed_shown_and_found_by_name(tmp_path, monkeypatch):
    from abaw.recipes import RECIPES_DIR, find_recipe

    assert RECIPES_DIR == RECIPES.resolve() and sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(NAMES)
    cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "abaw.recipes = *.yaml" in cfg  # shipped as package data: found when pip-installed too
    r = CliRunner().invoke(main, ["recipes"])
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[1:len(NAMES) + 1]}
    assert set(rows) == set(NAMES)
    assert "1.5286" in rows["abaw7-winner"] and "1.4939" in rows["hsemotion"] and "1.7607" in rows["abaw4-aim3"]
    r = CliRunner().invoke(main, ["recipes", "show", "hsemotion"])
    assert r.exit_code == 0 and r.output == (RECIPES / "hsemotion.yaml").read_text()
    monkeypatch.chdir(tmp_path)  # by name from anywhere; a path keeps working
    for ref in ("abaw7-winner", "abaw7-winner.yaml", str(RECIPES / "abaw7-winner.yaml")):
        out = tmp_path / f"{Path(ref).name}.out.yaml"
        r = CliRunner().invoke(main, ["train-heads", "--config", ref, "--write-default-config", str(out)])
        assert r.exit_code == 0, r.output
        assert read_settings(out)[0] == read_settings(tmp_path / "abaw7-winner.out.yaml")[0]
    assert read_settings(out)[0]["fusion"] == "ffm"
    (tmp_path / "hsemotion").mkdir()  # a folder of that name is not a settings file: the recipe is used
    assert find_recipe("hsemotion") == RECIPES_DIR / "hsemotion.yaml"
    for args in (["train-heads", "--config", "nope"], ["recipes", "show", "nope"],
                 ["search", "--space", "nope", "--cache", ".", "--out", "s", "--data", "."]):
        r = CliRunner().invoke(main, args + (["--write-default-config", "x.yaml"] if args[0] == "train-heads" else []))
        assert r.exit_code == 1 and "nope: no such file, nor a recipe name (recipes: abaw4-aim3" in r.output, r.output
