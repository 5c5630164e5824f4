"""Validation evaluations of finished runs, for `abaw report`.

A run folder is evaluated on its own validation frames: the saved raw outputs of its
best checkpoint, post-processed as the run fitted, scored against the validation labels
(rebuilt from the annotation files and videos the run recorded, or given). A search
folder contributes its top configs (a k-fold config: its folds' validation frames
together, i.e. an out-of-fold evaluation; repeated k-fold: the first partition's folds) and,
if present, its composed system (best-per-task, or a blend: its members' out-of-fold outputs
blended and post-processed as `composed.json` says).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from abaw.data.annotations import Annotations
from abaw.errors import AbawError
from abaw.io import read_json
from abaw.pipeline.report.html import RunEvaluation
from abaw.pipeline.blend_members import honest_info
from abaw.pipeline.composed import run_path


def evaluate_run(run_dir: str | os.PathLike, val_ann: Annotations | None = None,
                 name: str | None = None) -> RunEvaluation:
    """Post-processed validation decisions of one run, aligned with its labels."""
    from abaw.pipeline.train.postprocess import apply_postprocess
    from abaw.pipeline.train.run import load_run, run_labels

    run = load_run(run_dir)
    ann = run_labels(run_dir, val_ann)
    out = apply_postprocess(run.val_outputs(), run.postprocess)
    cfg = run.config
    info = {"run": str(run_dir), "tasks": ",".join(cfg.task_names), "backbones": ", ".join(run.keys),
            "fusion": cfg.model.fusion, "temporal": cfg.model.temporal, "window": cfg.window, "lr": cfg.lr,
            "best epoch": run.result.best_epoch, "post-processing": run.postprocess}
    return _evaluation(out, run.postprocess.au_thresholds, ann, name or Path(run_dir).name, info, (str(run_dir),),
                       run.tasks)


def evaluate_blend_system(path: str | os.PathLike, val_ann: Annotations | None = None,
                          name: str = "composed blend") -> RunEvaluation:
    """The validation decisions of a blend (`abaw blend` / `search --compose blend`): its members'
    outputs (k-fold configs out-of-fold) with its weights and post-processing, fitted on these frames."""
    from abaw.pipeline.blend import Member, blend_data, read_blend
    from abaw.pipeline.crossfit import CrossfitConfig
    from abaw.pipeline.train.postprocess import apply_postprocess

    path = Path(path)
    doc, system = read_json(path), read_blend(path)
    members: dict[str, Member] = {}
    for t, e in doc["tasks"].items():
        for m in e["members"]:
            prev = members.get(m["source"])
            members[m["source"]] = Member(m["source"], tuple(run_path(path.parent, r) for r in m["runs"]),
                                          (prev.tasks if prev else ()) + (t,))
    ms = list(members.values())
    data = blend_data(ms, val_ann, CrossfitConfig(smoothing=False))
    weight = {(t, m["source"]): m["weight"] for t, e in doc["tasks"].items() for m in e["members"]}
    w = {t: tuple(weight[t, n] for n in names) for t, names in data.names.items()}
    pp = system["postprocess"]
    out = apply_postprocess(data.blended(w, system["space"]), pp)
    ann = data.ann
    info = {"blend": str(path), "members": ", ".join(members), "space": system["space"], "post-processing": pp,
            **honest_info(doc.get("scores") or {})}
    return _evaluation(out, pp.au_thresholds, ann, name, info, tuple(str(r) for m in ms for r in m.runs),
                       tuple(doc["tasks"]))


def _evaluation(out, au_thresholds, ann: Annotations, name: str, info: dict[str, Any], run_dirs: tuple[str, ...],
                tasks: tuple[str, ...]) -> RunEvaluation:
    """Decisions from post-processed outputs, aligned with the labels `ann` (frames without output left out)."""
    from abaw.pipeline.train.outputs import decide

    va, expr, au = decide(out, au_thresholds)
    out_video = np.asarray(out.videos, dtype=object)[out.video_idx]
    index = {(v, int(f)): i for i, (v, f) in enumerate(zip(out_video.tolist(), out.frame.tolist()))}
    ann_video = ann.video_of_rows()
    rows = np.array([index.get((v, int(f)), -1) for v, f in zip(ann_video.tolist(), ann.frame.tolist())], np.int64)
    keep = rows >= 0  # frames skipped with --allow-missing have no output
    r = rows[keep]
    n = int(keep.sum())
    return RunEvaluation(
        name=name, videos=ann_video[keep], frame=ann.frame[keep],
        va_true=ann.va[keep], va_valid=ann.va_valid[keep] & ("va" in tasks),
        expr_true=ann.expr[keep], expr_valid=ann.expr_valid[keep] & ("expr" in tasks),
        au_true=ann.au[keep], au_valid=ann.au_valid[keep] & ("au" in tasks),
        va_pred=va[r] if va is not None else np.zeros((n, 2)),
        expr_pred=expr[r] if expr is not None else np.zeros(n, np.int64),
        au_pred=au[r] if au is not None else np.zeros((n, 12), np.int8), info=info, run_dirs=run_dirs)


def concat_evaluations(evals: list[RunEvaluation], name: str, info: dict[str, Any] | None = None) -> RunEvaluation:
    """Several evaluations on disjoint frames (k folds) as one."""
    fields = ("videos", "frame", "va_true", "va_valid", "expr_true", "expr_valid", "au_true", "au_valid",
              "va_pred", "expr_pred", "au_pred")
    return RunEvaluation(name=name, info=info or evals[0].info, run_dirs=tuple(d for e in evals for d in e.run_dirs),
                         **{f: np.concatenate([getattr(e, f) for e in evals]) for f in fields})


def compose_evaluations(per_task: dict[str, RunEvaluation], name: str) -> RunEvaluation:
    """Each task's decisions from its own evaluation, on the frames they share."""
    keys = None
    for e in per_task.values():
        k = set(zip(e.videos.tolist(), e.frame.tolist()))
        keys = k if keys is None else keys & k
    if not keys:
        raise AbawError("compose: the chosen runs share no validation frame")
    base = next(iter(per_task.values()))
    order = sorted(keys)

    def rows(e: RunEvaluation) -> np.ndarray:
        idx = {k: i for i, k in enumerate(zip(e.videos.tolist(), e.frame.tolist()))}
        return np.array([idx[k] for k in order], np.int64)

    b = rows(base)
    parts: dict[str, Any] = {"videos": base.videos[b], "frame": base.frame[b], "va_true": base.va_true[b],
                             "expr_true": base.expr_true[b], "au_true": base.au_true[b]}
    for t, (pred, valid) in {"va": ("va_pred", "va_valid"), "expr": ("expr_pred", "expr_valid"),
                             "au": ("au_pred", "au_valid")}.items():
        if t in per_task:
            e = per_task[t]
            r = rows(e)
            parts[pred], parts[valid] = getattr(e, pred)[r], getattr(e, valid)[r]
        else:
            parts[pred] = np.zeros_like(getattr(base, pred)[b])
            parts[valid] = np.zeros(len(order), bool)
    info = {t: per_task[t].name for t in per_task}
    return RunEvaluation(name=name, info={"composed from": info}, **parts)


def evaluations_from_paths(paths: list[str], val_ann: Annotations | None = None, top: int = 5) -> list[RunEvaluation]:
    """Evaluations of run folders and search folders (top configs + composed system)."""
    out: list[RunEvaluation] = []
    for p in paths:
        path = Path(p)
        if (path / "leaderboard.json").exists():
            rows = [r for r in read_json(path / "leaderboard.json") if "val" in r]
            by_cfg: dict[str, RunEvaluation] = {}

            def cfg_eval(row: dict[str, Any]) -> RunEvaluation:
                if row["config"] not in by_cfg:  # repeated k-fold: the first partition's folds
                    evs = [evaluate_run(run_path(path, d), val_ann) for d in row["runs"] if "/repeat" not in d]
                    by_cfg[row["config"]] = evs[0] if len(evs) == 1 else concat_evaluations(
                        evs, row["config"], {**evs[0].info, "folds": len(evs)})
                    by_cfg[row["config"]] = RunEvaluation(**{**by_cfg[row["config"]].__dict__,
                                                             "name": f"#{row['rank']} {row['config']}"})
                return by_cfg[row["config"]]

            for row in rows[:top]:
                out.append(cfg_eval(row))
            if (path / "composed.json").exists() and read_json(path / "composed.json").get("mode") == "blend":
                out.append(evaluate_blend_system(path / "composed.json", val_ann))
            elif (path / "composed.json").exists():
                comp = read_json(path / "composed.json")["tasks"]
                lookup = {r["config"]: r for r in rows}
                per_task = {t: cfg_eval(lookup[c["config"]]) for t, c in comp.items() if c["config"] in lookup}
                if per_task:
                    out.append(compose_evaluations(per_task, "composed best-per-task"))
        elif (path / "config.json").exists():
            out.append(evaluate_run(path, val_ann))
        else:
            raise AbawError(f"{path}: neither a run folder (config.json) nor a search folder (leaderboard.json)")
    return out
