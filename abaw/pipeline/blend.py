"""`abaw blend`: per-task weighted blends of several runs, weights searched on validation.

HSEmotion's last step (validation 1.4805 -> 1.4939 blending two backbones): per task the
runs' raw validation outputs (VA values, EXPR/AU probabilities; `space="logit"`: EXPR
log-probabilities and AU logits) are averaged with non-negative weights summing to 1,
chosen on a grid over the simplex (multiples of 1/`steps`; a pairwise coordinate search
when the grid is too large), each task on its own score after smoothing (the best of a few
kernel/window candidates: each member's own and the equal blend's; raw scores under-weight a
per-frame member that gains most from smoothing) on each run's best-epoch outputs (the
model that predicts; weights fitted on the honest outputs below scored lower on test in 5
and higher in 2 of 8 synthetic benchmark blends) and AU at per-AU thresholds fitted on
other folds of the validation videos (`au_weight_folds`: thresholds fitted on the scored
frames favour the member whose rare-AU scores overfit them most). The post-processing the
runs use (`abaw.pipeline.crossfit`: smoothing kernel and window per task, AU thresholds
fitted jointly) is then fitted on the blend.

Members: a run folder serves every task it trained; a search folder / composed.json serves
each task with its chosen config (k-fold configs: their folds' validation outputs together,
i.e. out-of-fold). All members must have validation outputs for the same frames. VA is
blended as one task: a run that trains one VA dimension only (`--tasks au,v`), or a
composed.json whose VA was chosen per dimension, is refused (predict those with `abaw predict`).
Run folders that differ only in their training seed are one member (`group_seeds`): their
outputs are averaged with equal weights, and the blend fits one weight for the seed ensemble.

Scores: `optimistic` (weights and post-processing fitted on all validation frames and
scored on them) and `honest`: the validation videos in `folds` folds (whole videos,
`abaw.pipeline.train.honest.assign_folds`); for each fold the weights AND the
post-processing are fitted on the other folds and applied to it (`crossfit_folds`), to
each member's *honest* outputs (`val_outputs_honest.npz`: every row at the epoch its run's
other honest folds chose, so the run's early stopping never saw the scored rows either;
runs without that file, validated on one video or written before it, use
`val_outputs.npz`); the pooled predictions are scored. Every member alone gets the same
three numbers. Members whose every frame was validated by n > 1 unseen runs while predict
averages more (repeated k-fold) add `ensemble`: the honest estimate on n views with one
unseen run per frame, extrapolated with score(m) = a - c/m to predict's number of models.

The blend is written as a composed-like JSON (`tasks: {t: {runs, weights, members}}`,
`postprocess`, `space`, `scores`, `folds`, `config`) that `abaw predict --compose` and
`abaw export-system` load (`read_blend`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from abaw.data.annotations import Annotations
from abaw.data.labels import TASKS, VA_DIMS, clip_ids
from abaw.errors import AbawError
from abaw.io import read_json, write_json
from abaw.pipeline.blend_members import (
    Member,
    ensemble_line,
    extrapolate,
    frame_keys,
    member_outputs,
    member_validation,
    member_views,
)
from abaw.pipeline.blend_weights import fit_weights
from abaw.pipeline.crossfit import (
    CrossfitConfig,
    Series,
    apply_postfit,
    crossfit_folds,
    fit_postfit,
    make_series,
    score_values,
    smooth,
    video_bootstrap_se,
)
from abaw.pipeline.train.honest import HONEST_OUTPUTS, assign_folds, crossfit_config
from abaw.pipeline.train.outputs import (
    SPACES,
    FrameOutputs,
    align_annotations,
    combine,
    format_weight,
    weight_matrix,
    weights_from_json,
    weights_json,
)
from abaw.results import Result, fmt_score

BLEND_VERSION = 1
AU_WEIGHTS = ("task", "per-au")


@dataclass(frozen=True)
class BlendConfig:
    """How a blend is fitted (saved in the blend file)."""

    space: str = "prob"  # prob | logit (EXPR/AU; VA is averaged as values)
    steps: int = 10  # weights are multiples of 1/steps
    folds: int = 5  # validation-video folds of the honest estimate
    group_seeds: bool = True  # runs whose settings differ only in `seed` form one equal-weight member
    au_weight_folds: int = 5  # AU weights scored at thresholds fitted on other video folds (0: on the scored rows)
    au_weights: str = "task"  # task: one weight per member for all AUs | per-au: one per member and AU

    def validate(self) -> BlendConfig:
        if self.space not in SPACES:
            raise AbawError(f"--space must be one of {', '.join(SPACES)}")
        if self.steps < 1 or self.folds < 2:
            raise AbawError("--steps must be >= 1 and --folds >= 2")
        if self.au_weights not in AU_WEIGHTS:
            raise AbawError(f"--au-weights must be one of {', '.join(AU_WEIGHTS)}")
        if self.au_weight_folds == 1 or self.au_weight_folds < 0:
            raise AbawError("--au-weight-folds must be 0 or >= 2")
        return self


def seed_key(cfg: Any) -> str:
    """What a run computes, its training seed left out (runs equal under it are seed replicas)."""
    return json.dumps({k: v for k, v in cfg.recorded().items() if k != "seed"}, sort_keys=True, default=str)


def group_seed_replicas(members: list[Member], keys: dict[str, str]) -> list[Member]:
    """Members whose `keys` are equal merged into one (their runs averaged with equal weights),
    in first-seen order; members without a key stay alone.

    Seed replicas are exchangeable: weighting them apart only fits noise of the validation
    split (a 3-seed ensemble blended with a linear probe is 2 weights to fit, not 4)."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(keys.get(m.name, f"\0{m.name}"), []).append(m)
    return [g[0] if len(g) == 1 else Member("+".join(m.name for m in g), tuple(r for m in g for r in m.runs),
                                            g[0].tasks)
            for g in groups.values()]


def members_of(sources: list[str], group_seeds: bool = True) -> list[Member]:
    """Run folders (every task they trained) and search folders / composed.json (per task);
    with `group_seeds`, run folders that differ only in their training seed form one member."""
    from abaw.pipeline.composed import read_composed
    from abaw.pipeline.train.run import read_config

    out: list[Member] = []
    keys: dict[str, str] = {}
    for src in sources:
        p = Path(src)
        if (p / "config.json").exists():
            if not (p / "result.json").exists():
                raise AbawError(f"{p}: the run is not finished (no result.json)")
            cfg = read_config(p)
            if "va" in cfg.tasks and cfg.va_dims != VA_DIMS:
                raise AbawError(f"{p}: trained {' and '.join(cfg.va_dims)} only; abaw blend needs VA members "
                                "that train both valence and arousal (predict such runs with abaw predict --run "
                                "/ --compose)")
            out.append(Member(str(p), (p,), cfg.tasks))
            keys[str(p)] = seed_key(cfg)
            continue
        f = p / "composed.json" if p.is_dir() else p
        if f.is_file() and read_json(f).get("mode") == "blend":
            raise AbawError(f"{f}: is a blend; give its sources instead")
        for t, runs in read_composed(p).items():
            if t in VA_DIMS:
                raise AbawError(f"{f}: composes VA per dimension ({t} from its own config); abaw blend needs VA "
                                "from configs that train both valence and arousal (predict it with abaw predict "
                                "--compose)")
            out.append(Member(f"{src}:{t}", tuple(runs), (t,)))
    if not out:
        raise AbawError("blend: no source")
    if len({m.name for m in out}) != len(out):
        raise AbawError("blend: a source is given twice")
    return group_seed_replicas(out, keys) if group_seeds else out


# ------------------------------------------------------------------ validation outputs of members: abaw.pipeline.blend_members


@dataclass(frozen=True, eq=False)
class BlendData:
    """Every member's outputs on the same frames, with the labelled `rows` and their labels."""

    template: FrameOutputs  # the frames (all of them are smoothing context)
    rows: np.ndarray  # rows of `template` with labels, in label order
    labels: Any  # Labels aligned with `template.take(rows)`
    arrays: dict[str, list[np.ndarray]]  # task -> one array per member serving it, over `template`'s frames
    names: dict[str, list[str]]  # task -> member names, same order
    cfg: CrossfitConfig
    honest: dict[str, list[np.ndarray]] | None = None  # like `arrays`, each row at an epoch chosen without it
    views: tuple[dict[str, list[np.ndarray]], ...] | None = None  # repeated k-fold: like `honest`, one model per frame
    models: tuple[int, int, int] | None = None  # models averaged per frame: in a view, in `honest`, by predict
    ann: Annotations | None = None  # the validation annotations `labels` were aligned from
    _smoothed: dict = field(default_factory=dict, repr=False)  # (task, member, kernel, window) -> [rows, C]

    def smoothed(self, t: str, i: int, kernel: str, window: int) -> np.ndarray:
        """Member i's `t` outputs smoothed over all frames, at the labelled rows (float32, cached)."""
        key = (t, i, kernel, window)
        if key not in self._smoothed:
            a = self.arrays[t][i]
            if window > 1:
                a = smooth(a, self.template.video_idx, self.template.frame, kernel, window)
            self._smoothed[key] = np.asarray(a, np.float32)[self.rows]
        return self._smoothed[key]

    def base(self) -> Series:
        """The labelled rows (no smoothing): labels and video ids for scores and folds."""
        return make_series(self.template.only(()), self.labels, CrossfitConfig(smoothing=False), self.rows)

    def clips(self) -> np.ndarray:
        """The clip id of each labelled row (`base()` order): folds keep a clip's tracks together."""
        return clip_ids(self.template.videos, self.template.video_idx[self.rows])

    def blended(self, weights: dict[str, tuple[float, ...]], space: str) -> FrameOutputs:
        return self.template.with_values(**{t: (combine(t, self.arrays[t], weights[t], space)
                                                if t in weights else None) for t in TASKS})

    def series(self, weights: dict[str, tuple[float, ...]], space: str) -> Series:
        return make_series(self.blended(weights, space), self.labels, self.cfg, self.rows)

    def alone(self, name: str) -> BlendData:
        """This data restricted to one member (the tasks it serves; without repeat views)."""
        keep = {t: [i for i, n in enumerate(ns) if n == name] for t, ns in self.names.items()}
        pick = lambda arrays: {t: [arrays[t][i] for i in ix] for t, ix in keep.items() if ix}  # noqa: E731
        return BlendData(self.template, self.rows, self.labels, pick(self.arrays),
                         {t: [name] for t, ix in keep.items() if ix}, self.cfg,
                         None if self.honest is None else pick(self.honest))

    def honest_view(self) -> BlendData:
        """The members' honest outputs in place of their best-epoch ones (itself without them)."""
        if self.honest is None:
            return self
        return BlendData(self.template, self.rows, self.labels, self.honest, self.names, self.cfg)

    def repeat_views(self) -> list[BlendData]:
        """Repeated k-fold: the honest outputs with one unseen model per frame, one BlendData per view."""
        return [BlendData(self.template, self.rows, self.labels, v, self.names, self.cfg) for v in self.views or ()]


def blend_data(members: list[Member], val_ann: Annotations | None, cfg: CrossfitConfig,
               with_views: bool = False, honest_views: bool = True) -> BlendData:
    """Load every member's validation outputs (best epoch and honest), aligned on the first member's frames;
    `with_views`: also the repeated k-fold views of the honest outputs (for `ensemble_estimate`), or
    of the best-epoch ones with `honest_views=False` (benchmarks comparing the two)."""
    ref, ann = member_validation(members[0], val_ann)
    ref_keys = {k: i for i, k in enumerate(frame_keys(ref))}
    arrays: dict[str, list[np.ndarray]] = {}
    honest: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    views: list[dict[str, list[np.ndarray]]] | None = None
    models: set[tuple[int, int, int]] = set()
    for m in members:
        out = ref if m is members[0] else member_outputs(m)[0]
        keys = frame_keys(out)
        pos = np.array([ref_keys.get(k, -1) for k in keys], np.int64)
        if len(keys) != len(ref_keys) or (pos < 0).any():
            raise AbawError(f"{m.name}: its validation frames differ from those of {members[0].name} "
                            f"({len(keys)} vs {len(ref_keys)} frames); blend runs validated on the same videos")
        inv = np.empty(len(pos), np.int64)
        inv[pos] = np.arange(len(pos))
        hon = member_outputs(m, honest=True)[0] if any((r / HONEST_OUTPUTS).is_file() for r in m.runs) else out
        if hon is not out and frame_keys(hon) != keys:
            raise AbawError(f"{m.name}: its honest validation outputs cover other frames than its val_outputs.npz")
        v = member_views(m, honest_views) if with_views else None
        use = v is not None and (views is None or len(views) == len(v.outputs)) and frame_keys(v.outputs[0]) == keys
        if use:
            views = views if views is not None else [{} for _ in v.outputs]
            models.add((1, v.per_frame, v.predict))
        else:
            models.add((0, 0, 0))  # no views: the ensemble extrapolation does not apply to the blend
        for t in m.tasks:
            if getattr(out, t) is None:
                raise AbawError(f"{m.name}: no {t.upper()} validation outputs")
            arrays.setdefault(t, []).append(getattr(out, t)[inv])
            honest.setdefault(t, []).append(getattr(hon, t)[inv])
            names.setdefault(t, []).append(m.name)
            if use:
                for j, o in enumerate(v.outputs):
                    views[j].setdefault(t, []).append(getattr(o, t)[inv])
    try:
        rows, labels = align_annotations(ref, ann)
    except AbawError as e:
        raise AbawError(f"{members[0].name}: {e}") from None
    one = len(models) == 1 and (0, 0, 0) not in models
    return BlendData(ref.only(()), rows, labels, arrays, names, cfg, honest, tuple(views) if one and views else None,
                     models.pop() if one and views else None, ann)


# ------------------------------------------------------------------ weights: abaw.pipeline.blend_weights


# ------------------------------------------------------------------ the estimate


@dataclass(frozen=True)
class BlendFit:
    weights: dict[str, tuple[float, ...]]
    postfit: Any  # PostFit fitted on all validation frames
    raw: dict[str, float | None]
    optimistic: dict[str, float | None]
    honest: dict[str, float | None]
    fold_videos: list[list[str]]
    fold_weights: list[dict[str, tuple[float, ...]]]  # fold f: fitted on the other folds only
    fold_postfits: list[Any]
    ensemble: dict[str, Any] | None = None  # repeated k-fold: the honest estimate extrapolated to predict's average


def fold_series(data: BlendData, fold_w: list[dict[str, tuple[float, ...]]], space: str) -> Callable[[int], Series]:
    """Fold f -> `data` blended with fold f's weights (`crossfit_folds`'s series_of); folds whose
    weights coincide share one Series."""
    cache: dict[str, Series] = {}

    def series_of(f: int) -> Series:
        key = repr(sorted(fold_w[f].items()))
        if key not in cache:
            cache[key] = data.series(fold_w[f], space)
        return cache[key]

    return series_of


def evaluate_blend(data: BlendData, cfg: BlendConfig) -> BlendFit:
    """Weights + post-processing fitted on all validation (optimistic) and cross-fitted by video fold."""
    base = data.base()
    if len(base.videos()) < 2:
        raise AbawError("blend: the honest estimate needs at least two validation videos")
    everything = np.arange(len(base))
    w_all = fit_weights(data, everything, cfg.space, cfg.steps, cfg.au_weight_folds,
                        cfg.au_weights == "per-au")
    s_all = data.series(w_all, cfg.space)
    pf_all = fit_postfit(s_all, data.cfg)
    raw = score_values({t: s_all.outputs[t] for t in s_all.tasks}, s_all, None)
    optimistic = score_values(apply_postfit(s_all, pf_all), s_all, pf_all.au_thresholds)
    fold = assign_folds(data.clips(), cfg.folds)
    k = int(fold.max()) + 1
    fold_w = [fit_weights(data, np.flatnonzero(fold != f), cfg.space, cfg.steps, cfg.au_weight_folds,
                          cfg.au_weights == "per-au")
              for f in range(k)]
    scored = data.honest_view()  # each member's epoch, too, chosen without the scored rows
    values, thr, fits = crossfit_folds(fold, fold_series(scored, fold_w, cfg.space), data.cfg)
    honest = {**score_values(values, base, thr), "se": video_bootstrap_se(values, base, thr, groups=data.clips())}
    vids = data.template.videos
    fold_videos = [sorted({vids[v] for v in np.unique(base.video_idx[fold == f])}) for f in range(k)]
    return BlendFit(w_all, pf_all, raw, optimistic, honest, fold_videos, fold_w, [fits[f] for f in range(k)],
                    ensemble_estimate(data, fold, fold_w, cfg.space, honest))


def ensemble_estimate(data: BlendData, fold: np.ndarray, fold_w: list[dict[str, tuple[float, ...]]], space: str,
                      honest: dict[str, Any]) -> dict[str, Any] | None:
    """Repeated k-fold: the honest estimate scores each frame by the mean of its R unseen models,
    `abaw predict` averages all K x R. The same cross-fitted estimate on each view (one unseen
    model per frame; the folds' weights, post-processing fitted on the view's other folds), the
    mean over views, and both extrapolated (`extrapolate`) to predict's number of models."""
    if not data.views or data.models is None:
        return None
    base = data.base()
    per_view = []
    for view in data.repeat_views():
        values, thr, _ = crossfit_folds(fold, fold_series(view, fold_w, space), data.cfg)
        per_view.append(score_values(values, base, thr))
    few, many, target = data.models
    keys = [key for key, v in honest.items() if key != "se" and v is not None and all(p.get(key) is not None
                                                                                      for p in per_view)]
    views = {key: float(np.mean([p[key] for p in per_view])) for key in keys}
    return {**{key: extrapolate(views[key], honest[key], few, many, target) for key in keys},
            "views": views, "models": {"view": few, "honest": many, "predict": target}}


# ------------------------------------------------------------------ the command


@dataclass(frozen=True)
class BlendResult(Result):
    out: str
    space: str
    tasks: dict[str, dict[str, Any]]  # task -> {members: [{source, weight}], score, honest}
    scores: dict[str, dict[str, float | None]]  # raw / optimistic / honest
    members: tuple[dict[str, Any], ...]  # each member alone: source, tasks, raw, optimistic, honest
    folds: int

    def format(self) -> str:
        def line(name: str, sc: dict[str, Any]) -> str:
            se = f" ± {sc['honest']['se']:.3f}" if sc["honest"].get("se") is not None else ""
            return (f"  {name:<34} P {sc['optimistic']['total']:.4f}  honest {sc['honest']['total']:.4f}{se}  "
                    f"raw {sc['raw']['total']:.4f}   " + "  ".join(
                        f"{t.upper()} {fmt_score(sc['optimistic'].get(t))}/{fmt_score(sc['honest'].get(t))}"
                        for t in TASKS if t in sc["optimistic"]))

        lines = [f"validation P_MTL (optimistic: fitted and scored on all validation; honest: weights and "
                 f"post-processing fitted on the other of {self.folds} folds of validation videos, ± its "
                 "standard error over validation videos; "
                 "per task optimistic/honest):"]
        lines += [line(m["source"], m) for m in self.members]
        lines.append(line(f"blend ({self.space})", self.scores))
        if self.scores.get("ensemble"):
            lines.append("  " + ensemble_line(self.scores["ensemble"], self.scores["honest"]))
        for t, e in self.tasks.items():
            lines.append(f"  {t.upper()} weights: " + ", ".join(f"{m['source']} {format_weight(m['weight'])}"
                                                              for m in e["members"]))
        lines.append(f"blend written to {self.out} (abaw predict --compose {self.out})")
        return "\n".join(lines)


def blend(sources: list[str], out: str | os.PathLike, cfg: BlendConfig = BlendConfig(),
          val_ann: Annotations | None = None, overwrite: bool = False) -> BlendResult:
    """Fit the per-task blend of `sources` on validation and write it to `out` (a JSON file)."""
    cfg.validate()
    dest = Path(out)
    if dest.is_dir():
        raise AbawError(f"{dest}: is a folder; -o names the blend's JSON file (e.g. {dest / 'blend.json'})")
    if dest.exists() and not overwrite:
        raise AbawError(f"{dest}: exists; choose another -o or pass --overwrite")
    return write_blend(members_of(list(sources), cfg.group_seeds), dest, cfg, val_ann,
                       [str(s) for s in sources])


def write_blend(members: list[Member], dest: Path, cfg: BlendConfig, val_ann: Annotations | None,
                sources: list[str]) -> BlendResult:
    """Fit the blend of `members` and write it to `dest` (run paths relative to its folder)."""
    from abaw.config import to_dict
    from abaw.pipeline.train.postprocess import PostProcess
    from abaw.pipeline.train.run import read_config

    cf = crossfit_config(read_config(members[0].runs[0]))  # the runs' own post-processing search
    data = blend_data(members, val_ann, cf, with_views=True)
    fit = evaluate_blend(data, cfg)
    alone = []
    for m in dict.fromkeys(n for ns in data.names.values() for n in ns):
        f = evaluate_blend(data.alone(m), cfg)
        alone.append({"source": m, "tasks": [t for t in TASKS if m in data.names.get(t, [])],
                      "raw": f.raw, "optimistic": f.optimistic, "honest": f.honest})
    base_dir = dest.resolve().parent
    by_name = {m.name: m for m in members}
    tasks: dict[str, dict[str, Any]] = {}
    for t in TASKS:
        if t not in data.names:
            continue
        runs, weights, mem = [], [], []
        for name, w in zip(data.names[t], weights_json(fit.weights[t])):
            m = by_name[name]
            mem.append({"source": name, "runs": [os.path.relpath(r.resolve(), base_dir) for r in m.runs],
                        "weight": w})
            runs += mem[-1]["runs"]
            weights += weights_json([np.asarray(w) / len(m.runs)] * len(m.runs))
        tasks[t] = {"runs": runs, "weights": weights, "members": mem,
                    "score": fit.optimistic[t], "honest": fit.honest[t]}
    pp = PostProcess.from_postfit(fit.postfit, tuple(tasks), cf.thresholds)
    scores = {"raw": fit.raw, "optimistic": fit.optimistic, "honest": fit.honest,
              **({"ensemble": fit.ensemble} if fit.ensemble else {})}
    doc = {"abaw_blend": BLEND_VERSION, "mode": "blend", "space": cfg.space, "tasks": tasks,
           "postprocess": to_dict(pp), "total": fit.optimistic["total"], "honest": fit.honest["total"],
           "scores": scores, "members": alone,
           "folds": {"videos": fit.fold_videos,
                     "weights": [{t: weights_json(x) for t, x in w.items()} for w in fit.fold_weights],
                     "postprocess": [asdict(p) for p in fit.fold_postfits]},
           "config": {**asdict(cfg), "postprocess_search": asdict(cf), "sources": sources}}
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, doc)
    return BlendResult(out=str(dest), space=cfg.space, tasks=tasks, scores=scores, members=tuple(alone),
                       folds=len(fit.fold_videos))


def read_blend(path: str | os.PathLike) -> dict[str, Any]:
    """The `System` fields of a blend file (weights, space, post-processing); {} for a composed.json."""
    from abaw.config import from_dict
    from abaw.pipeline.train.postprocess import PostProcess

    p = Path(path)
    p = p / "composed.json" if p.is_dir() else p
    data = read_json(p) if p.is_file() else {}
    if data.get("mode") != "blend":
        return {}
    try:
        if data.get("abaw_blend") != BLEND_VERSION or data["space"] not in SPACES:
            raise KeyError("abaw_blend")
        weights = {t: weights_from_json(e["weights"]) for t, e in data["tasks"].items()}
        for t, w in weights.items():
            weight_matrix(w, len(data["tasks"][t]["runs"]), t)
        return {"weights": weights, "space": data["space"], "postprocess": from_dict(PostProcess, data["postprocess"])}
    except (KeyError, TypeError, ValueError, AbawError) as e:
        raise AbawError(f"{p}: not a blend written by abaw blend ({e})") from None


__all__ = ["BlendConfig", "BlendResult", "Member", "blend", "evaluate_blend", "group_seed_replicas", "member_outputs",
           "read_blend", "seed_key", "write_blend"]
