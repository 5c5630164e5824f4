"""`abaw search`: train many head configurations from one cache and rank them.

Each sampled config (a dict of `TrainConfig` overrides, see `abaw.pipeline.search.space`) gets a
run folder `OUT/runs/<config id>/` (with `--folds K`: `OUT/runs/<id>/fold<k>/`), so a
rerun skips finished configs and resumes unfinished ones. Results go to a leaderboard
(`leaderboard.csv`, `leaderboard.json`, printed table, `leaderboard.png`) sorted by
validation P_MTL (after post-processing; the mean over folds with `--folds`), with the
per-task scores alongside. `compose="best-per-task"` writes `composed.json`: for each
task the config that scored best on it, the way the ABAW7 winner assembled its system.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from abaw.config import to_dict
from abaw.data.annotations import Annotations
from abaw.data.labels import TASKS
from abaw.errors import AbawError
from abaw.io import atomic_write, read_json, write_json
from abaw.pipeline.search.space import SearchSpace, config_id, sample_configs
from abaw.pipeline.train.config import TrainConfig
from abaw.results import Result

COMPOSE_MODES = ("best-per-task",)


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (saved in `search.json`)."""

    budget: int | None = None  # configs to run (None: the whole grid / one random draw)
    seed: int = 0  # sampling seed
    folds: int = 0  # 0: the given train/val split; K >= 2: K-fold by video over train + val
    jobs: int = 1  # runs at once: CPU processes or GPU slots (0 / -1: as many as fit), see search/execute.py
    scheduler: str | None = None  # a Dask scheduler's address (tcp://HOST:8786): run on its cluster instead
    compose: str | None = None  # "best-per-task"


def _normalise(key: str, value: Any) -> Any:
    """Accept handy spellings in space files: `tasks: au,expr`, `backbones: a+b`, `task_weights: 1,1,0.5`."""
    if key in ("tasks", "smooth_windows", "init_from") and isinstance(value, str):
        return [v for v in value.replace("+", ",").split(",") if v]
    if key == "backbones" and isinstance(value, str):
        return [v for v in value.split("+") if v]
    if key == "task_weights" and isinstance(value, str):
        return [float(v) for v in value.split(",")]
    return value


def config_from_overrides(base: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """`base` with some fields replaced (names checked, lists turned into tuples)."""
    names = set(TrainConfig.flat_names())
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise AbawError(f"unknown training-config keys {unknown}; known: {', '.join(sorted(names))}")
    merged = {**base.flat(), **{k: _normalise(k, v) for k, v in overrides.items()}}
    if merged.get("tasks"):
        merged["tasks"] = [t for t in TASKS if t in merged["tasks"]] + [t for t in merged["tasks"] if t not in TASKS]
    return TrainConfig.from_dict(merged).validate()


def kfold_videos(ann: Annotations, k: int, seed: int = 0) -> list[list[str]]:
    """Split the videos of `ann` into k folds of about equal frame counts (by video, exact ids).

    `_left`/`_right` tracks of the same clip stay in the same fold.
    """
    if k < 2:
        raise AbawError("--folds must be at least 2")
    clips: dict[str, list[str]] = {}
    for v in ann.videos:
        base = v.removesuffix("_left").removesuffix("_right")
        clips.setdefault(base, []).append(v)
    if len(clips) < k:
        raise AbawError(f"{k} folds need at least {k} videos; the annotations have {len(clips)}")
    sizes = {c: sum(ann.video_slice(v).stop - ann.video_slice(v).start for v in vs) for c, vs in clips.items()}
    rng = np.random.default_rng(seed)
    names = sorted(clips)
    rng.shuffle(names)
    names.sort(key=lambda c: -sizes[c])  # stable: ties keep the shuffled order
    folds: list[list[str]] = [[] for _ in range(k)]
    load = [0] * k
    for c in names:
        i = int(np.argmin(load))
        folds[i].extend(clips[c])
        load[i] += sizes[c]
    return [sorted(f) for f in folds]


# ------------------------------------------------------------------ the search


def _scores_of(results: list[dict[str, Any]], step: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for t in (*TASKS, "total"):
        vals = [r["result"][step].get(t) for r in results]
        out[t] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def run_search(space: SearchSpace, store: str | os.PathLike, train_ann: Annotations, val_ann: Annotations,
               out: str | os.PathLike, settings: SearchSettings = SearchSettings(),
               base: TrainConfig = TrainConfig(), progress: bool = True,
               log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the sampled configs (resumably) and return the leaderboard rows, best first.

    `progress` shows a progress bar; `log` receives the one-line plan (runs, finished, jobs).
    """
    from abaw.cache.store import FeatureStore
    from abaw.pipeline.search.execute import Run, execute, plan_for
    from abaw.pipeline.train.loop import available_keys, resolve_backbones

    if settings.compose is not None and settings.compose not in COMPOSE_MODES:
        raise AbawError(f"--compose must be one of {', '.join(COMPOSE_MODES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [(config_id(o), o, config_from_overrides(base, o)) for o in sample_configs(space, settings.budget,
                                                                                         settings.seed)]
    write_json(out / "search.json", {"settings": to_dict(settings), "space": to_dict(space),
                                     "base": to_dict(base), "configs": {i: o for i, o, _ in configs}})
    fstore = FeatureStore(store, "r")
    # splits: the given train/val, or K folds by video over train + val
    if settings.folds >= 2:
        every = Annotations.concat([train_ann, val_ann])
        folds = kfold_videos(every, settings.folds, settings.seed)
        splits = [(every.select_videos([v for j, f in enumerate(folds) if j != i for v in f]),
                   every.select_videos(folds[i])) for i in range(settings.folds)]
        write_json(out / "folds.json", {f"fold{i}": f for i, f in enumerate(folds)})
    else:
        splits = [(train_ann, val_ann)]
    videos = tuple(sorted(set(train_ann.videos) | set(val_ann.videos)))
    available = available_keys(fstore, list(videos))
    keys = tuple(sorted({k for _, _, c in configs for k in resolve_backbones(c.backbones, available)}))
    device = next((c.device for _, _, c in configs if c.device not in ("auto", "cuda")), "auto")
    plan = plan_for(settings.jobs, settings.scheduler, device, len(configs) * len(splits), str(store), keys, videos)

    work: list[Run] = []
    for cid, _, cfg in configs:
        for k, (tr, va) in enumerate(splits):
            run_dir = out / "runs" / cid / f"fold{k}" if len(splits) > 1 else out / "runs" / cid
            work.append(Run(cid, run_dir, to_dict(cfg), tr, va))
    n_done = sum(1 for w in work if (w.run_dir / "result.json").exists())
    log(f"search: {len(configs)} configs x {len(splits)} split(s) = {len(work)} runs "
        f"({n_done} already finished), {plan.describe()}")
    results = execute(work, plan, str(store), keys, videos, progress=progress, log=log)
    by_cfg: dict[str, list[dict[str, Any]]] = {}
    for w, r in zip(work, results):
        by_cfg.setdefault(w.config, []).append(r)

    rows = []
    for cid, overrides, cfg in configs:
        rs = by_cfg[cid]
        errors = [r["error"] for r in rs if "error" in r]
        row: dict[str, Any] = {"config": cid, "overrides": overrides, "tasks": ",".join(cfg.tasks),
                               "runs": [os.path.relpath(r["run"], out) for r in rs]}  # relative to OUT
        if errors:
            row["error"] = errors[0]
        else:
            row["val"] = _scores_of(rs, "val_final")
            row["val_raw"] = _scores_of(rs, "val_raw")
            row["seconds"] = float(sum(r.get("seconds", 0.0) for r in rs))
        rows.append(row)
    rows.sort(key=lambda r: (-r["val"]["total"]) if "val" in r else np.inf)
    for i, r in enumerate(rows, 1):
        r["rank"] = i if "val" in r else None
    _write_leaderboard(out, rows)
    composed = None
    if settings.compose == "best-per-task":
        composed = compose_best_per_task(rows)
        write_json(out / "composed.json", composed)
    return SearchResult(out=str(out), rows=tuple(rows), composed=composed)


@dataclass(frozen=True)
class SearchResult(Result):
    """The ranked configs of a search (`rows`, as in leaderboard.json) and the composed system."""

    out: str
    rows: tuple[dict[str, Any], ...]
    composed: dict[str, Any] | None = None  # composed.json with --compose best-per-task

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "error" in r]

    def format(self) -> str:
        lines = [format_leaderboard(list(self.rows)), f"leaderboard: {Path(self.out) / 'leaderboard.csv'}"]
        if self.composed is not None:
            c = self.composed
            parts = ", ".join(f"{t.upper()} {v['score']:.4f} ({v['config']})" for t, v in c["tasks"].items())
            lines.append(f"composed best-per-task: P {c['total']:.4f} = {parts}  -> {Path(self.out) / 'composed.json'}")
        return "\n".join(lines)

    @property
    def warnings(self) -> tuple[str, ...]:
        n = len(self.failed)
        return (f"error: {n} configs failed (see the leaderboard)",) if n else ()


def compose_best_per_task(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For each task, the config (and its run folders) with the best validation score on it."""
    chosen: dict[str, Any] = {}
    for t in TASKS:
        cands = [r for r in rows if "val" in r and r["val"].get(t) is not None]
        if not cands:
            continue
        best = max(cands, key=lambda r: r["val"][t])
        chosen[t] = {"config": best["config"], "score": best["val"][t], "runs": best["runs"]}
    if not chosen:
        raise AbawError("compose: no finished config scored any task")
    return {"mode": "best-per-task", "tasks": chosen,
            "total": float(sum(c["score"] for c in chosen.values()))}


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _describe(overrides: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(show(x) for x in v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in sorted(overrides.items()) if k not in ("tasks",))


def _write_leaderboard(out: Path, rows: list[dict[str, Any]]) -> None:
    write_json(out / "leaderboard.json", rows)
    cols = ["rank", "config", "tasks", "P_VA", "P_EXPR", "P_AU", "P_MTL", "P_MTL_raw", "seconds", "settings",
            "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        v, raw = r.get("val", {}), r.get("val_raw", {})
        w.writerow([r["rank"] or "", r["config"], r["tasks"], _fmt(v.get("va")), _fmt(v.get("expr")),
                    _fmt(v.get("au")), _fmt(v.get("total")), _fmt(raw.get("total")),
                    f"{r['seconds']:.1f}" if "seconds" in r else "", _describe(r["overrides"]), r.get("error", "")])
    with atomic_write(out / "leaderboard.csv", "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    ok = [r for r in rows if "val" in r]
    if ok:
        from abaw.plots import score_bars

        score_bars(out / "leaderboard.png", {f"#{r['rank']} {r['config']}": r["val"] for r in ok[:8]})


def format_leaderboard(rows: list[dict[str, Any]], top: int | None = None) -> str:
    """The leaderboard as a fixed-width table (validation scores after post-processing).

    The settings column shows only what differs between configs (the rest is in search.json).
    """
    varying = _varying_keys(rows)
    lines = [f"{'#':>3} {'config':<10} {'tasks':<11} {'P_VA':>7} {'P_EXPR':>7} {'P_AU':>7} {'P_MTL':>7} "
             f"{'raw':>7}  settings"]
    for r in rows[:top]:
        shown = _describe({k: v for k, v in r["overrides"].items() if k in varying})
        if "val" not in r:
            lines.append(f"{'-':>3} {r['config']:<10} {r['tasks']:<11} failed: {r['error']}")
            continue
        v, raw = r["val"], r["val_raw"]
        lines.append(f"{r['rank']:>3} {r['config']:<10} {r['tasks']:<11} {_fmt(v['va']):>7} {_fmt(v['expr']):>7} "
                     f"{_fmt(v['au']):>7} {_fmt(v['total']):>7} {_fmt(raw['total']):>7}  {shown}")
    return "\n".join(lines)


def _varying_keys(rows: list[dict[str, Any]]) -> set[str]:
    keys = {k for r in rows for k in r["overrides"]}
    return {k for k in keys if len({json.dumps(r["overrides"].get(k), sort_keys=True) for r in rows}) > 1}


def run_path(search_dir: str | os.PathLike, run: str) -> Path:
    """A run folder named in leaderboard.json / composed.json (relative to the search folder)."""
    return Path(search_dir) / run


def read_composed(path: str | os.PathLike) -> dict[str, list[Path]]:
    """task -> run folders from a `composed.json` (or a search folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "composed.json"
    if not p.exists():
        raise AbawError(f"{p}: no such file (run abaw search with --compose best-per-task)")
    data = read_json(p)
    try:
        return {t: [run_path(p.parent, r) for r in c["runs"]] for t, c in data["tasks"].items()}
    except (KeyError, TypeError):
        raise AbawError(f"{p}: not a composed.json written by abaw search") from None
