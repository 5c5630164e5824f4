"""Exported systems beyond one run, predicting real faces end to end: a blend (`abaw blend` ->
`export-system` -> `predict --system`) and VA split over runs that trained one dimension each
(`--tasks au,v` / `--tasks a`), each checked against the same runs predicted directly
(`--compose` / `--run`). The runs train on mtcnn:onet features (conftest `onet_train`), whose
backbone rebuilds offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.pipeline.predict.table import read_results
from tests.conftest import REAL_FACES

pytestmark = pytest.mark.usefixtures("one_thread")

N_FRAMES = 24  # of single_face.mp4: a real face over enough frames for the runs' smoothing to matter


def cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def cli_export(source: Path, out: Path) -> Path:
    cli("export-system", source, "-o", out)
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first N_FRAMES frames of the real single-face video, as a numbered frame folder."""
    from PIL import Image

    from abaw.pipeline.predict.inputs import discover_inputs, iter_chunks

    if not (REAL_FACES / "single_face.mp4").exists():
        pytest.skip("shared/data/real_faces is absent")
    out = tmp_path_factory.mktemp("clip") / "single_face"
    out.mkdir()
    (item,), _ = discover_inputs([str(REAL_FACES / "single_face.mp4")])
    for ch in iter_chunks(item, chunk=16, skipped=[]):
        for f, rgb in zip(ch.frame, ch.rgb):
            if f <= N_FRAMES:
                Image.fromarray(rgb).save(out / f"{int(f):05d}.png")
    assert len(list(out.iterdir())) == N_FRAMES
    return out


@pytest.fixture(scope="module")
def runs(onet_train, onet_run) -> dict[str, Path]:
    """`all`: VA + EXPR + AU (no temporal module); `gru`: the same tasks with a GRU, another seed;
    `v`: AU + valence only; `a`: arousal only."""
    return {"all": onet_run, "gru": onet_train("gru", temporal="gru", seed=1),
            "v": onet_train("v", tasks=("au", "v")), "a": onet_train("a", tasks=("a",), seed=2)}


@pytest.fixture
def predict(clip, tmp_path):
    """`predict(name, *system_args)`: `abaw predict --video CLIP` into tmp_path/name; (table, stderr)."""

    def _predict(name: str, *args) -> tuple[pd.DataFrame, str]:
        r = CliRunner().invoke(main, ["predict", *map(str, args), "--video", str(clip), "--detect-size", "320",
                                      "--out", str(tmp_path / name), "--no-plots", "-q"])
        assert r.exit_code == 0, r.output
        return read_results(tmp_path / name), r.stderr

    return _predict


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6)


def test_an_exported_blend_predicts_as_the_blend(runs, predict, onet_cache, tiny_synth, tmp_path):
    cli("blend", runs["all"], runs["gru"], "-o", tmp_path / "blend.json", "--steps", "4", "--folds", "2")
    cli("export-system", tmp_path / "blend.json", "-o", tmp_path / "sys")
    manifest = json.loads((tmp_path / "sys" / "system.json").read_text())
    assert set(manifest["blend"]["weights"]) == {"va", "expr", "au"} and len(manifest["runs"]) == 2
    got, err = predict("sys", "--system", tmp_path / "sys")
    want, _ = predict("compose", "--compose", tmp_path / "blend.json")
    assert "trained on synthetic data" in err
    assert len(got) == N_FRAMES and (got["face"] == 1).all() and (got["face_id"] == 0).all()
    assert got[["valence", "arousal", "p_Neutral", "AU01_prob"]].notna().all().all()
    _same(got, want)
    info = {n: json.loads((tmp_path / n / "predictions.json").read_text()) for n in ("sys", "compose")}
    assert "(blend, prob space)" in info["sys"]["system"]
    # each exported run keeps its training time scale: these dense frames are predicted in passes
    # at the gap of the sparse training labels, as the runs themselves predict them
    gaps = [json.loads((runs[k] / "data.json").read_text())["time_scale"]["window_gap"] for k in ("all", "gru")]
    assert [e["train_gap"] for e in manifest["runs"].values()] == gaps
    scales = {n: list(i["inputs"][0]["time_scale"].values()) for n, i in info.items()}
    assert scales["sys"] == scales["compose"] and {s["mode"] for s in scales["sys"]} == {"subsampled"}
    # and the same submission from the feature cache
    args = ["--cache", onet_cache[0] / "c.zarr", "--test-list", tiny_synth / "MTL.txt", "-q"]
    cli("predict", "--system", tmp_path / "sys", "--out", tmp_path / "sys.txt", *args)
    cli("predict", "--compose", tmp_path / "blend.json", "--out", tmp_path / "compose.txt", *args)
    assert (tmp_path / "sys.txt").read_text() == (tmp_path / "compose.txt").read_text()


def test_an_exported_split_va_system_takes_each_dimension_from_its_run(runs, predict, tmp_path):
    cli("export-system", runs["v"], runs["a"], "-o", tmp_path / "va")
    manifest = json.loads((tmp_path / "va" / "system.json").read_text())
    assert {r["spec"]["va_dims"][0] for r in manifest["runs"].values()} == {"valence", "arousal"}
    got, err = predict("va", "--system", tmp_path / "va")
    _same(got, predict("runs", "--run", runs["v"], "--run", runs["a"])[0])
    assert "does not predict EXPR;" in err  # arousal is predicted: not listed as missing
    assert got["valence"].notna().all() and got["arousal"].notna().all() and got["AU01_prob"].notna().all()
    # valence is the V run's alone, arousal the A run's alone
    v_only, err = predict("v", "--system", cli_export(runs["v"], tmp_path / "v_sys"))
    a_only, _ = predict("a", "--run", runs["a"])
    np.testing.assert_allclose(got["valence"], v_only["valence"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["arousal"], a_only["arousal"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["valence"], got["arousal"])
    # a V-only system: the arousal column is empty, never a made-up number
    assert v_only["arousal"].isna().all() and v_only["valence"].notna().all()
    assert "does not predict EXPR, arousal; those columns are empty" in err
    csv = pd.read_csv(tmp_path / "v" / "predictions.csv", dtype=str, keep_default_na=False)
    assert (csv["arousal"] == "").all() and (csv["valence"] != "").all()
    assert a_only["valence"].isna().all() and a_only["AU01_prob"].isna().all()


def test_an_exported_composition_per_va_dimension(runs, predict, tmp_path):
    """composed.json with `valence` / `arousal` entries: arousal from a run that trained both."""
    from abaw.io import write_json

    write_json(tmp_path / "composed.json", {"mode": "best-per-task", "tasks": {
        "valence": {"config": "v", "score": 0.5, "runs": [str(runs["v"])]},
        "arousal": {"config": "all", "score": 0.5, "runs": [str(runs["all"])]},
        "au": {"config": "v", "score": 0.5, "runs": [str(runs["v"])]}}})
    cli("export-system", tmp_path / "composed.json", "-o", tmp_path / "sys")
    manifest = json.loads((tmp_path / "sys" / "system.json").read_text())
    assert set(manifest["va_dims"]) == {"valence", "arousal"} and set(manifest["tasks"]) == {"va", "au"}
    got, _ = predict("sys", "--system", tmp_path / "sys")
    _same(got, predict("compose", "--compose", tmp_path / "composed.json")[0])
    both, _ = predict("all", "--run", runs["all"])
    np.testing.assert_allclose(got["arousal"], both["arousal"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["valence"], both["valence"])  # valence: the V run's, not the joint run's
    assert got["expression"].isna().all() and got["AU01"].notna().all()
