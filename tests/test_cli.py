"""The command line: help, synth, evaluate and validate-submission end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.data.annotations import read_annotations
from abaw.data.submission import write_submission
from abaw.data.testlist import read_test_list


def test_help_lists_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ["synth", "evaluate", "validate-submission"]:
        assert cmd in r.output


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "abaw", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "abaw" in r.stdout


def _oracle_submission(root, path, corrupt=False):
    tl = read_test_list(root / "MTL.txt")
    ann = read_annotations(root / "test_set_annotations.txt")
    idx = {n: i for i, n in enumerate(ann.images())}
    rows = np.array([idx[n] for n in tl.images])
    va = np.where(ann.va_valid[rows, None], ann.va[rows], 0.0)
    expr = ann.expr[rows].clip(0)
    if corrupt:
        expr = (expr + 1) % 8
    write_submission(path, tl.images, va, expr, ann.au[rows].clip(0))
    return tl


def test_evaluate_and_validate(tiny_synth, tmp_path):
    sub = tmp_path / "sub.txt"
    _oracle_submission(tiny_synth, sub)
    runner = CliRunner()
    r = runner.invoke(main, ["validate-submission", str(sub), "--test-list", str(tiny_synth / "MTL.txt")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["evaluate", str(sub), str(tiny_synth / "test_set_annotations.txt"),
                             "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["va"] == pytest.approx(1.0, abs=1e-6) and s["total"] > 2.0
    # a perfect AU prediction scores 1 on every AU that occurs, 0 on an AU never active
    ann = read_annotations(tiny_synth / "test_set_annotations.txt")
    occurs = (ann.au[ann.au_valid] == 1).any(0)
    assert s["au"] == pytest.approx(occurs.mean())
    assert "P_MTL" in r.output
    # a wrong-expression submission scores lower on EXPR only
    _oracle_submission(tiny_synth, tmp_path / "bad.txt", corrupt=True)
    r = runner.invoke(main, ["evaluate", str(tmp_path / "bad.txt"), str(tiny_synth / "test_set_annotations.txt"),
                             "--json", str(tmp_path / "b.json")])
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["expr"] < s["expr"] and b["va"] == s["va"]


def test_errors_are_one_line_with_exit_1(tiny_synth, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("image,valence,arousal,expression,aus\nx/00001.jpg,0,0,0,0\n")
    r = CliRunner().invoke(main, ["evaluate", str(bad), str(tiny_synth / "test_set_annotations.txt")])
    assert r.exit_code == 1
    assert r.output.strip().startswith("error: ") and f"{bad}:2:" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["validate-submission", str(bad), "--test-list", str(tiny_synth / "MTL.txt")])
    assert r.exit_code == 1 and "invalid:" in r.output
    # predictions missing for annotated frames
    ok = tmp_path / "partial.txt"
    _oracle_submission(tiny_synth, ok)
    lines = ok.read_text().splitlines()
    ok.write_text("\n".join(lines[:-5]) + "\n")
    r = CliRunner().invoke(main, ["evaluate", str(ok), str(tiny_synth / "test_set_annotations.txt")])
    assert r.exit_code == 1 and "have no prediction (e.g." in r.output


def test_synth_cli(tmp_path):
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--train-videos", "2", "--val-videos", "1",
                                  "--test-videos", "1", "--min-frames", "6", "--max-frames", "8",
                                  "--no-videos", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "MTL.txt").exists() and "wrote" in r.output
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--no-videos"])
    assert r.exit_code == 1 and "use --overwrite" in r.output


def test_atomic_write_respects_umask(tmp_path):
    import os
    import stat

    from abaw.io import atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f.txt") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


# ---------------------------------------------------------------- the CLI cannot drift from the configs


def _option_defaults(cmd, required: list[str]) -> dict:
    """The values the command receives when only its required options are given."""
    return dict(cmd.make_context(cmd.name, required).params)


def test_train_heads_options_default_to_train_config(tmp_path):
    from abaw.commands.options import parse_task_weights, parse_task_windows, parse_tasks
    from abaw.commands.train import train_heads
    from abaw.pipeline.train import TrainConfig

    opts, cfg = _option_defaults(train_heads, ["--cache", str(tmp_path), "--out", str(tmp_path)]), TrainConfig()
    convert = {"tasks": parse_tasks, "task_weights": parse_task_weights, "task_windows": parse_task_windows,
               "backbones": tuple, "init_from": tuple,
               "max_gap": lambda v: None if v == "none" else int(v), "stride": lambda v: v,
               "smooth_kernels": lambda v: tuple(v.split(","))}
    flat = cfg.flat()
    assert set(flat) - set(opts) == {"smooth_windows"}  # a new field needs an option (or a place here)
    for name in sorted(set(flat) & set(opts)):
        got = convert.get(name, lambda v: v)(opts[name])
        want = flat[name] if not isinstance(flat[name], list) else tuple(flat[name])
        assert got == want, f"--{name.replace('_', '-')}: {got!r} vs TrainConfig {want!r}"


def test_finetune_options_default_to_finetune_config(tmp_path):
    from dataclasses import fields

    from abaw.commands.train import finetune
    from abaw.pipeline.finetune.config import AugmentConfig, FinetuneConfig

    ann = tmp_path / "a.txt"
    ann.write_text("x")
    opts = _option_defaults(finetune, ["--task", "va", "--backbone", "x", "--data", str(tmp_path), "--train-ann",
                                       str(ann), "--val-ann", str(ann), "--out", str(tmp_path)])
    cfg = FinetuneConfig(task="va", backbone="x", data="d", train_ann="t", val_ann="v")
    for f in fields(FinetuneConfig):
        if f.name in opts and f.name not in ("task", "backbone", "data", "train_ann", "val_ann", "augment"):
            assert opts[f.name] == getattr(cfg, f.name), f.name
    aug = AugmentConfig()
    assert (opts["augment"], opts["flip"], opts["rotation"]) == (aug.enabled, aug.flip, aug.rotation)
    assert (opts["crop_scale"], 1.0) == aug.crop_scale
    assert opts["color_jitter"] == aug.brightness == aug.contrast == aug.saturation
    assert {f.name for f in fields(FinetuneConfig)} <= set(opts)  # a new field needs an option
