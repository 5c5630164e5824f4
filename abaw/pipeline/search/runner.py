"""`abaw search`: train many head configurations from one cache and rank them.

Each sampled config (a dict of `TrainConfig` overrides, see `abaw.pipeline.search.space`) gets a
run folder `OUT/runs/<config id>/` (with `--folds K`: `OUT/runs/<id>/fold<k>/`), so a
rerun skips finished configs and resumes unfinished ones. Results go to a leaderboard
(`leaderboard.csv`, `leaderboard.json`, printed table, `leaderboard.png`) sorted by
the honest (cross-fitted) validation estimate (the mean over folds with `--folds`), with
the optimistic and raw scores and the per-task scores alongside (see
`abaw.pipeline.search.leaderboard`). The `linear` head is always one of the configs
(`baseline=False` to leave it out). `compose="best-per-task"` writes `composed.json`: for
each task the config that scored best on it, the way the ABAW7 winner assembled its
system; `compose="blend"`: an `abaw blend` of every config per task (seed replicas of a
config averaged as one member; see `compose_blend`). With `folds >= 3`, `nested.json`
holds the nested estimate of the selection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from abaw.config import to_dict
from abaw.data.annotations import Annotations
from abaw.data.labels import TASKS, VA_DIMS, clip_of
from abaw.errors import AbawError
from abaw.io import read_json, write_json
from abaw.pipeline.search.leaderboard import (
    compose_best_per_task,
    format_leaderboard,
    make_row,
    nested_estimate,
    rank,
    write_leaderboard,
)
from abaw.pipeline.blend_members import ensemble_line
from abaw.pipeline.search.space import SearchSpace, config_id, sample_configs
from abaw.pipeline.train.config import TrainConfig
from abaw.pipeline.train.outputs import format_weight
from abaw.results import Result
from abaw.rundir import check_identity, data_identity, feature_fingerprints

COMPOSE_MODES = ("best-per-task", "blend")
# The baseline config: the `linear` head fitted to convergence (full-batch L-BFGS, L2 as scikit-learn's C = 0.1).
# Measured in bench/bench_accuracy.py (sparse synth, 450 training videos): test EXPR 0.69 / AU 0.72 vs 0.63 / 0.70
# for the same head trained by AdamW with early stopping, and vs 0.67 / 0.72 for scikit-learn's LogisticRegression.
BASELINE = {"arch": "linear", "temporal": "none", "solver": "lbfgs"}


def baseline_overrides(base: TrainConfig) -> dict[str, Any]:
    """The settings of the baseline config added to a search whose fixed settings are `base`."""
    return dict(BASELINE)


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (saved in `search.json`)."""

    budget: int | None = None  # configs to run (None: the whole grid / one random draw)
    seed: int = 0  # sampling seed
    folds: int = 0  # 0: the given train/val split; K >= 2: K-fold by video over train + val
    repeats: int = 1  # repeated K-fold: R partitions into K folds (R x K runs per config); every frame R unseen models
    stratify: bool | None = None  # folds balanced on the labels too (expression classes, AU positives), not only
    # frames; None: stratified whenever folds >= 2 (False: frames only, the partitions of searches before it was default)
    jobs: int = 1  # runs at once: CPU processes or GPU slots (0 / -1: as many as fit), see search/execute.py
    scheduler: str | None = None  # a Dask scheduler's address (tcp://HOST:8786): run on its cluster instead
    compose: str | None = None  # "best-per-task" | "blend" (every config, seed replicas as one member)
    baseline: bool = True  # add the `linear` head (HSEmotion's recipe) as one more config unless the space has it


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


def kfold_videos(ann: Annotations, k: int, seed: int = 0, repeat: int = 0, stratify: bool = False) -> list[list[str]]:
    """Split the videos of `ann` into k folds of about equal frame counts (by video, exact ids).

    `_left`/`_right` tracks of the same clip stay in the same fold. `repeat` 0: the largest clips
    first, each to the least-loaded fold (ties in a seeded order); repeat r >= 1 (repeated K-fold):
    the clips in a random order seeded by (seed, r), each to the least-loaded fold, so every
    repeat is another partition of about equal folds. `stratify`: "least loaded" counts the labels
    too (`label_profile`): each clip goes to the fold whose shares of the frames, of every
    expression class and of every AU's positives it moves closest to 1/k, so no fold holds most
    of a rare class (which its own fold model would then barely see).
    """
    if k < 2:
        raise AbawError("--folds must be at least 2")
    clips: dict[str, list[str]] = {}
    for v in ann.videos:
        clips.setdefault(clip_of(v), []).append(v)
    if len(clips) < k:
        raise AbawError(f"{k} folds need at least {k} videos; the annotations have {len(clips)}")
    profile = {c: sum(label_profile(ann, v, stratify) for v in vs) for c, vs in clips.items()}
    names = sorted(clips)
    if repeat == 0:
        np.random.default_rng(seed).shuffle(names)
        names.sort(key=lambda c: -profile[c][0])  # stable: ties keep the shuffled order
    else:
        np.random.default_rng([seed, repeat]).shuffle(names)
    total = np.sum([profile[c] for c in names], 0)
    scale = np.where(total > 0, 1.0 / np.maximum(total, 1), 0.0)
    folds: list[list[str]] = [[] for _ in range(k)]
    load = np.zeros((k, len(total)))
    for c in names:
        if stratify:  # the fold whose shares move closest to 1/k (squared distance over every label column)
            after = ((load + profile[c]) * scale - 1.0 / k) ** 2 - (load * scale - 1.0 / k) ** 2
            i = int(np.argmin(after.sum(1)))
        else:
            i = int(np.argmin(load[:, 0]))
        folds[i].extend(clips[c])
        load[i] += profile[c]
    return [sorted(f) for f in folds]


def label_profile(ann: Annotations, video: str, labels: bool = True) -> np.ndarray:
    """What a fold split balances for one video: [frames] or, with `labels`, [frames, VA frames,
    frames of each expression class (8), positives of each AU (12)]."""
    sl = ann.video_slice(video)
    n = float(sl.stop - sl.start)
    if not labels:
        return np.array([n])
    expr = ann.expr[sl][ann.expr_valid[sl]]
    au = ann.au[sl][ann.au_valid[sl]]
    return np.concatenate([[n, float(ann.va_valid[sl].sum())], np.bincount(expr, minlength=8)[:8].astype(float),
                           (au == 1).sum(0).astype(float)])


SPLIT_FIELDS = ("folds", "stratify", "seed")  # what decides a k-fold search's partitions (each repeat's is its own)


def check_splits(out: Path, saved: dict[str, Any], now: SearchSettings) -> None:
    """AbawError unless a rerun of the search in `out` partitions the videos as its first run did
    (more or fewer --repeats reuse the partitions there; searches saved before `stratify` existed,
    or was the default, were unstratified)."""
    was = {"folds": 0, "stratify": False, "seed": 0, **{k: v for k, v in saved.items() if v is not None}}
    if was["folds"] < 2 and now.folds < 2:
        return
    diff = [f"{k} {was[k]} != {getattr(now, k)}" for k in SPLIT_FIELDS if was[k] != getattr(now, k)]
    if diff:
        flags = f"--folds {was['folds']} --seed {was['seed']}" + (
            "" if was["folds"] < 2 else " --stratify" if was["stratify"] else " --no-stratify")
        raise AbawError(f"{out}: cannot rerun the search, its folds were split otherwise ({'; '.join(diff)}); "
                        f"rerun with {flags} or choose another --out")


def fold_name(repeat: int, fold: int) -> str:
    """A k-fold run's folder below its config: `fold<k>`, or `repeat<r>/fold<k>` for repeats r >= 1."""
    return f"fold{fold}" if repeat == 0 else f"repeat{repeat}/fold{fold}"


# ------------------------------------------------------------------ the search


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
    if settings.repeats < 1 or (settings.repeats > 1 and settings.folds < 2):
        raise AbawError("--repeats R needs R >= 1, and R >= 2 needs --folds K >= 2")
    if settings.stratify and settings.folds < 2:
        raise AbawError("--stratify needs --folds K >= 2")
    settings = replace(settings, stratify=settings.folds >= 2 and settings.stratify is not False)
    out = Path(out)
    previous = read_json(out / "search.json") if (out / "search.json").exists() else None  # a rerun
    if previous is not None:  # it must split the videos as the runs here were split
        check_splits(out, previous.get("settings", {}), settings)
    out.mkdir(parents=True, exist_ok=True)
    sampled = sample_configs(space, settings.budget, settings.seed)
    if settings.baseline and not any(o.get("arch", base.model.arch) == "linear" for o in sampled):
        sampled.append(baseline_overrides(base))  # the linear probe on the same features, so the search never loses to it unseen
    configs = [(config_id(o), o, config_from_overrides(base, o)) for o in sampled]
    fstore = FeatureStore(store, "r")
    videos = tuple(sorted(set(train_ann.videos) | set(val_ann.videos)))
    available = available_keys(fstore, list(videos))
    keys = tuple(sorted({k for _, _, c in configs for k in resolve_backbones(c.backbones, available)}))
    identity = data_identity({"train": train_ann, "val": val_ann}, feature_fingerprints(fstore, keys, videos))
    if previous is not None:  # and the runs here were trained on this data
        check_identity(out, previous.get("data"), identity, "rerun the search here",
                       "choose another --out")
    write_json(out / "search.json", {"settings": to_dict(settings), "space": to_dict(space), "base": to_dict(base),
                                     "configs": {i: o for i, o, _ in configs}, "data": identity})
    # splits: the given train/val, or K folds by video over train + val (R partitions with --repeats)
    parts: dict[str, list[str]] = {}  # k-fold run folder name -> its validation videos, in split order
    if settings.folds >= 2:
        every = Annotations.concat([train_ann, val_ann])
        splits = []
        for r in range(settings.repeats):
            folds = kfold_videos(every, settings.folds, settings.seed, r, stratify=settings.stratify)
            for i in range(settings.folds):
                splits.append((every.select_videos([v for j, f in enumerate(folds) if j != i for v in f]),
                               every.select_videos(folds[i])))
                parts[fold_name(r, i)] = folds[i]
        write_json(out / "folds.json", parts)
    else:
        splits = [(train_ann, val_ann)]
    device = next((c.device for _, _, c in configs if c.device not in ("auto", "cuda")), "auto")
    plan = plan_for(settings.jobs, settings.scheduler, device, len(configs) * len(splits), str(store), keys, videos)

    work: list[Run] = []
    fold_dirs = list(parts)
    for cid, _, cfg in configs:
        for k, (tr, va) in enumerate(splits):
            run_dir = out / "runs" / cid / fold_dirs[k] if fold_dirs else out / "runs" / cid
            work.append(Run(cid, run_dir, to_dict(cfg), tr, va))
    n_done = sum(1 for w in work if (w.run_dir / "result.json").exists())
    kind = "" if settings.folds < 2 else " (stratified folds)" if settings.stratify else " (frame-only folds)"
    log(f"search: {len(configs)} configs x {len(splits)} split(s){kind} = {len(work)} runs "
        f"({n_done} already finished), {plan.describe()}")
    results = execute(work, plan, str(store), keys, videos, progress=progress, log=log)
    by_cfg: dict[str, list[dict[str, Any]]] = {}
    for w, r in zip(work, results):
        by_cfg.setdefault(w.config, []).append(r)

    rows = rank([make_row(cid, overrides, cfg.task_names, by_cfg[cid], [os.path.relpath(r["run"], out) for r in by_cfg[cid]])
                 for cid, overrides, cfg in configs])  # run folders relative to OUT
    write_leaderboard(out, rows)
    nested = nested_estimate(rows, settings.folds or None)  # on the first partition's folds
    if nested is not None:
        write_json(out / "nested.json", nested)
    composed = None
    if settings.compose == "best-per-task":
        composed = compose_best_per_task(rows)
        write_json(out / "composed.json", composed)
    elif settings.compose == "blend":
        composed = compose_blend(out, rows, {cid: cfg for cid, _, cfg in configs},
                                 val_ann if len(splits) == 1 else None)
    return SearchResult(out=str(out), rows=tuple(rows), composed=composed, nested=nested)


def compose_blend(out: Path, rows: list[dict[str, Any]], configs: dict[str, TrainConfig],
                  val_ann: Annotations | None) -> dict[str, Any]:
    """`composed.json` as an `abaw blend` of every finished config (per task, weights fitted on
    validation, cross-fitted for the honest score; k-fold configs: out-of-fold). Configs that
    differ only in `seed` are one member (a seed ensemble: `--seeds 0,1,2`). A config training
    one VA dimension serves its other tasks only."""
    from abaw.pipeline.blend import BlendConfig, Member, group_seed_replicas, seed_key, write_blend

    members, keys = [], {}
    for r in rows:
        if "val" not in r:
            continue
        cfg = configs[r["config"]]
        tasks = tuple(t for t in cfg.tasks if t != "va" or cfg.va_dims == VA_DIMS)
        if tasks:
            members.append(Member(r["config"], tuple(out / run for run in r["runs"]), tasks))
            keys[r["config"]] = seed_key(cfg)
    if not members:
        raise AbawError("compose: no finished config to blend")
    members = group_seed_replicas(members, keys)
    res = write_blend(members, out / "composed.json", BlendConfig(), val_ann, [m.name for m in members])
    return read_json(Path(res.out))


@dataclass(frozen=True)
class SearchResult(Result):
    """The ranked configs of a search (`rows`, as in leaderboard.json) and the composed system."""

    out: str
    rows: tuple[dict[str, Any], ...]
    composed: dict[str, Any] | None = None  # composed.json with --compose best-per-task / blend
    nested: dict[str, Any] | None = None  # nested.json with --folds K >= 3 (selection scored on unseen folds)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if "error" in r]

    def format(self) -> str:
        lines = [format_leaderboard(list(self.rows)), f"leaderboard: {Path(self.out) / 'leaderboard.csv'}"]
        if self.composed is not None and self.composed.get("mode") == "blend":
            c = self.composed
            parts = "; ".join(f"{t.upper()} " + ", ".join(f"{m['source']} {format_weight(m['weight'])}"
                                                      for m in e["members"] if np.max(m["weight"]) > 0)
                              for t, e in c["tasks"].items())
            se = c["scores"]["honest"].get("se")
            lines.append(f"composed blend: P {c['total']:.4f} (honest {c['honest']:.4f}"
                         f"{'' if se is None else f' ± {se:.3f}'}) = {parts}  "
                         f"-> {Path(self.out) / 'composed.json'}")
        elif self.composed is not None:
            c = self.composed
            parts = ", ".join(f"{t if t in VA_DIMS else t.upper()} {v['score']:.4f} ({v['config']})"
                              for t, v in c["tasks"].items())
            honest = f" (honest {c['honest']:.4f})" if "honest" in c else ""
            lines.append(f"composed best-per-task: P {c['total']:.4f}{honest} = {parts}  "
                         f"-> {Path(self.out) / 'composed.json'}"
                         + (f" (partial: no config trained {', '.join(c['partial'])})" if c.get("partial") else ""))
        runs = [str(r) for row in self.rows for r in row.get("runs", ())]
        if any("/fold" in r for r in runs):
            ens = (self.composed or {}).get("scores", {}).get("ensemble")
            if ens:
                lines.append(ensemble_line(ens, self.composed["scores"]["honest"]) + " (README: Folds)")
            elif any("/repeat" in r for r in runs):
                lines.append("repeated k-fold: every validation frame is scored by the mean of the fold models (one "
                             "per repeat) that did not train on it; `predict` averages all the fold models "
                             "(README: Folds)")
            else:
                lines.append("k-fold: every validation frame is scored by the one fold model that did not train on "
                             "it; `predict` averages all the fold models, which tends to score higher than these "
                             "estimates (`--repeats 2` narrows the gap and, with --compose blend, extrapolates "
                             "to predict's average; README: Folds)")
        if self.nested is not None:
            n = self.nested
            lines.append(f"nested estimate over {n['folds']} folds (configs chosen on the other folds): best config "
                         f"P {n['best']:.4f}, composed best-per-task P {n['composed']:.4f}")
        return "\n".join(lines)

    @property
    def warnings(self) -> tuple[str, ...]:
        n = len(self.failed)
        return (f"error: {n} configs failed (see the leaderboard)",) if n else ()
