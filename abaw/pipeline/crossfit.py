"""Cross-fitted post-processing: honest validation scores for smoothing + AU thresholds.

Post-processing fitted on validation (smoothing kernel and window per task, per-AU
thresholds fitted *after* smoothing, jointly with the AU window) and then scored on the
same frames is optimistic. `crossfit` fits it, for each validation video, on the OTHER
videos only and applies it to that video; the pooled predictions give the honest
(cross-fitted) score, reported beside the optimistic fit-on-all one.

Smoothing never crosses videos, so every (kernel, window) is computed once over all
frames; a fold then only selects rows. The fit function receives `data.take(other_rows)`
and nothing else, so by construction it cannot see the scored video.

Kernels (`KERNELS`): `box` (moving average), `gaussian` (sigma = window / 4, support
+-window//2) and `median`, all over frame-number distance within the video (gaps are
respected: missing frames simply don't contribute). Pure numpy; the inputs are duck-typed
(`FrameOutputs`-like: `video_idx`, `frame`, `va`, `expr`, `au`; `Labels`-like: `va`,
`expr`, `au` and `*_valid`), aligned row by row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from abaw.metrics import mtl_score

TASK_NAMES = ("va", "expr", "au")
KERNELS = ("box", "gaussian", "median")
WINDOWS = (1, 3, 5, 9, 15, 25, 41, 65, 101)
GRID = tuple(float(x) for x in np.round(np.arange(0.05, 0.951, 0.05), 2))


@dataclass(frozen=True)
class CrossfitConfig:
    """What the post-processing may choose (per task: kernel and window; AU: thresholds)."""

    kernels: tuple[str, ...] = KERNELS
    windows: tuple[int, ...] = WINDOWS
    smoothing: bool = True
    thresholds: bool = True
    grid: tuple[float, ...] = GRID


@dataclass(frozen=True)
class PostFit:
    """One fitted post-processing: (kernel, window) per task and the AU thresholds."""

    smooth: dict[str, tuple[str, int]] = field(default_factory=dict)
    au_thresholds: tuple[float, ...] | None = None


def smooth(values: np.ndarray, video_idx: np.ndarray, frame: np.ndarray, kernel: str, window: int) -> np.ndarray:
    """`values` [N, C] smoothed with `kernel` over frames within +-window//2 of the same video."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) == 0:
        return x.copy()
    absent = np.isnan(x).all(0)  # a VA dimension the run did not train: stays NaN, other columns smoothed
    if absent.any():
        out = np.full_like(x, np.nan)
        if not absent.all():
            out[:, ~absent] = smooth(x[:, ~absent], video_idx, frame, kernel, window)
        return out
    if kernel == "box":
        return _box(x, np.asarray(video_idx), np.asarray(frame).astype(np.int64), window // 2)
    h = window // 2
    out = np.empty_like(x)
    vid, fr = np.asarray(video_idx), np.asarray(frame).astype(np.int64)
    for v in np.unique(vid):
        rows = np.flatnonzero(vid == v)
        f = fr[rows] - fr[rows].min()
        grid = np.full((int(f.max()) + 1 + 2 * h, x.shape[1]), np.nan)
        grid[f + h] = x[rows]
        if kernel == "median":
            from numpy.lib.stride_tricks import sliding_window_view

            n = sliding_window_view(~np.isnan(grid[:, 0]), 2 * h + 1)[f].sum(1)  # frames present per window
            lo, hi = (n - 1) // 2, n // 2
            r = np.arange(len(f))
            for c in range(x.shape[1]):  # one column at a time: rows x window floats; NaN sorts last
                win = np.sort(sliding_window_view(grid[:, c], 2 * h + 1)[f], axis=1)
                out[rows, c] = 0.5 * (win[r, lo] + win[r, hi])
            continue
        d = np.arange(-h, h + 1, dtype=np.float64)
        k = np.exp(-0.5 * (d / max(window / 4.0, 1e-6)) ** 2)
        present = ~np.isnan(grid[:, 0])
        num = np.stack([np.convolve(np.nan_to_num(grid[:, c]), k, "same") for c in range(x.shape[1])], 1)
        den = np.convolve(present.astype(np.float64), k, "same")
        out[rows] = num[f + h] / den[f + h, None]
    return out


def _box(x: np.ndarray, vid: np.ndarray, fr: np.ndarray, h: int) -> np.ndarray:
    """Moving average over frames within +-h of the same video (cumulative sums: O(N))."""
    order = np.lexsort((fr, vid))
    vi, f_all, xs = vid[order], fr[order], x[order]
    out = np.empty_like(xs)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(vi)) + 1, [len(vi)]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        f = f_all[a:b]
        lo = np.searchsorted(f, f - h, "left")
        hi = np.searchsorted(f, f + h, "right")
        cs = np.concatenate([np.zeros((1,) + xs.shape[1:]), np.cumsum(xs[a:b], axis=0)])
        out[a:b] = (cs[hi] - cs[lo]) / (hi - lo).reshape((-1,) + (1,) * (xs.ndim - 1))
    res = np.empty_like(out)
    res[order] = out
    return res


@dataclass(frozen=True, eq=False)
class Series:
    """Validation outputs + labels + every precomputed smoothing, row-aligned (one fold's view)."""

    video_idx: np.ndarray
    frame: np.ndarray
    outputs: dict[str, np.ndarray]  # task -> raw outputs [N, C]
    labels: dict[str, np.ndarray]  # task -> labels; f"{task}_valid" -> bool [N]
    smoothed: dict[tuple[str, str, int], np.ndarray]  # (task, kernel, window) -> [N, C]

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASK_NAMES if t in self.outputs)

    def videos(self) -> np.ndarray:
        return np.unique(self.video_idx)

    def take(self, rows: np.ndarray) -> Series:
        return Series(self.video_idx[rows], self.frame[rows], {t: a[rows] for t, a in self.outputs.items()},
                      {k: a[rows] for k, a in self.labels.items()},
                      {k: a[rows] for k, a in self.smoothed.items()})

    def values(self, task: str, kernel: str, window: int) -> np.ndarray:
        return self.outputs[task] if window <= 1 else self.smoothed[(task, kernel, window)]


def make_series(outputs: Any, labels: Any, cfg: CrossfitConfig = CrossfitConfig(),
                rows: np.ndarray | None = None) -> Series:
    """A Series from FrameOutputs-like outputs and Labels-like labels aligned row by row, or
    with the `rows` of the outputs (then every output frame is smoothing context)."""
    n = len(outputs.frame) if rows is None else len(rows)
    if n != len(labels.expr):
        raise ValueError(f"make_series: {n} outputs vs {len(labels.expr)} labels")
    outs = {t: np.asarray(getattr(outputs, t), np.float64) for t in TASK_NAMES if getattr(outputs, t) is not None}
    labs: dict[str, np.ndarray] = {}
    for t in TASK_NAMES:
        labs[t] = np.asarray(getattr(labels, t))
        labs[f"{t}_valid"] = np.asarray(getattr(labels, f"{t}_valid"), bool)
    vid, fr = np.asarray(outputs.video_idx), np.asarray(outputs.frame)
    sm = {}
    if cfg.smoothing:
        sm = {(t, k, w): smooth(a, vid, fr, k, w) for t, a in outs.items() for k in cfg.kernels
              for w in cfg.windows if w > 1}
    if rows is not None:
        vid, fr = vid[rows], fr[rows]
        outs = {t: a[rows] for t, a in outs.items()}
        sm = {k: a[rows] for k, a in sm.items()}
    return Series(vid, fr, outs, labs, sm)


def fit_thresholds(prob: np.ndarray, true: np.ndarray, valid: np.ndarray, grid=GRID) -> np.ndarray:
    """Per-AU threshold maximising binary F1 on the valid rows (ties: closest to 0.5)."""
    p, t = prob[valid], true[valid].astype(bool)
    if len(p) == 0:
        return np.full(prob.shape[1], 0.5)
    g = np.asarray(grid, np.float64)
    pred = p[None, :, :] >= g[:, None, None]  # [G, N, C]
    tp = (pred & t[None]).sum(1)
    den = pred.sum(1) + t.sum(0)[None]
    f1 = np.divide(2.0 * tp, den, out=np.zeros(den.shape), where=den > 0) - 1e-9 * np.abs(g - 0.5)[:, None]
    return g[f1.argmax(0)]


def task_score(task: str, values: np.ndarray, s: Series, thr: np.ndarray | None = None) -> float | None:
    """The task's ABAW score of `values` on the valid rows of `s` (AU: at `thr`, default 0.5)."""
    m = s.labels[f"{task}_valid"]
    if not m.any():
        return None
    if task == "va":
        r = mtl_score(va_pred=np.clip(values, -1, 1), va_true=s.labels["va"], va_mask=m).va
    elif task == "expr":
        r = mtl_score(expr_pred=values.argmax(1), expr_true=s.labels["expr"], expr_mask=m).expr
    else:
        t = np.full(values.shape[1], 0.5) if thr is None else np.asarray(thr)
        r = mtl_score(au_pred=(values >= t[None]).astype(np.int8), au_true=s.labels["au"], au_mask=m).au
    return float(r)


def fit_postfit(s: Series, cfg: CrossfitConfig = CrossfitConfig()) -> PostFit:
    """Choose (kernel, window) per task on `s`; AU thresholds fitted after smoothing, jointly."""
    chosen: dict[str, tuple[str, int]] = {}
    thr = None
    for task in s.tasks:
        cands = [("box", 1)] + ([(k, w) for k in cfg.kernels for w in cfg.windows if w > 1] if cfg.smoothing else [])
        best, best_c, best_thr = -np.inf, ("box", 1), None
        for k, w in cands:
            v = s.values(task, k, w)
            t = None
            if task == "au" and cfg.thresholds and s.labels["au_valid"].any():
                t = fit_thresholds(v, s.labels["au"], s.labels["au_valid"], cfg.grid)
            sc = task_score(task, v, s, t)
            if sc is not None and sc > best + 1e-12:
                best, best_c, best_thr = sc, (k, w), t
        chosen[task] = best_c
        if task == "au" and best_thr is not None:
            thr = tuple(float(x) for x in best_thr)
    return PostFit(chosen, thr)


def apply_postfit(s: Series, pf: PostFit) -> dict[str, np.ndarray]:
    """Per-task post-processed values of the rows of `s` (smoothing was per video)."""
    return {t: s.values(t, *pf.smooth.get(t, ("box", 1))) for t in s.tasks}


def score_values(values: dict[str, np.ndarray], s: Series, thr) -> dict[str, float | None]:
    """Per-task scores and their sum `total` (AU decided at per-row thresholds `thr` [N, 12] or [12]);
    with VA also `valence` and `arousal` (None: a dimension not predicted)."""
    out: dict[str, float | None] = {}
    for t, v in values.items():
        if t == "au" and thr is not None and np.ndim(thr) == 2:
            out[t] = task_score(t, (v >= thr).astype(np.float64), s, np.full(v.shape[1], 0.5))
        else:
            out[t] = task_score(t, v, s, thr if t == "au" else None)
    out["total"] = float(sum(x for x in out.values() if x is not None))
    if "va" in values and s.labels["va_valid"].any():
        r = mtl_score(va_pred=np.clip(values["va"], -1, 1), va_true=s.labels["va"], va_mask=s.labels["va_valid"])
        out["valence"], out["arousal"] = r.valence, r.arousal
    return out


def video_bootstrap_se(values: dict[str, np.ndarray], s: Series, thr, n: int = 200, seed: int = 0,
                       groups: np.ndarray | None = None) -> float | None:
    """The standard error of P_MTL due to which videos were scored: the standard deviation of
    `score_values(...)["total"]` over `n` resamples of whole videos (with replacement) of the
    fixed predictions `values` (thresholds `thr` as in `score_values`). None with one video.

    The scale against which an estimate's distance from another split's score is read: two
    splits of this size differ by about sqrt(se_1^2 + se_2^2) by chance alone. `groups`: a unit
    id per row resampled instead of the video (`clip_ids`: the tracks of a clip together)."""
    unit = s.video_idx if groups is None else np.asarray(groups)
    vids = np.unique(unit)
    if len(vids) < 2:
        return None
    rows_of = [np.flatnonzero(unit == v) for v in vids]
    rng = np.random.default_rng(seed)
    totals = []
    for _ in range(n):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(vids), len(vids))])
        sub = Series(s.video_idx[rows], s.frame[rows], {}, {k: a[rows] for k, a in s.labels.items()}, {})
        th = thr[rows] if thr is not None and np.ndim(thr) == 2 else thr
        totals.append(score_values({t: v[rows] for t, v in values.items()}, sub, th)["total"])
    return float(np.std(totals, ddof=1))


@dataclass(frozen=True)
class CrossfitResult:
    optimistic: dict[str, float | None]  # post-processing fitted on all videos, scored on them
    honest: dict[str, float | None]  # each video scored with post-processing fitted on the others
    raw: dict[str, float | None]  # no post-processing (AU at 0.5)
    fit_all: PostFit
    folds: dict[int, PostFit]  # video index (group id with `groups`) -> the PostFit applied to it

    def to_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "optimistic": self.optimistic, "honest": self.honest,
                "fit_all": asdict(self.fit_all), "folds": {str(k): asdict(v) for k, v in self.folds.items()}}


FitFn = Callable[[Series, CrossfitConfig], PostFit]


def crossfit(s: Series, cfg: CrossfitConfig = CrossfitConfig(), fit_fn: FitFn = fit_postfit,
             groups: np.ndarray | None = None) -> CrossfitResult:
    """Optimistic and honest (leave-one-video-out) post-processed scores of a validation Series.

    `groups`: a group id per row left out together instead of the video (`clip_ids`: the two
    tracks of one clip)."""
    fold = s.video_idx if groups is None else np.asarray(groups)
    if len(fold) != len(s):
        raise ValueError(f"crossfit: {len(fold)} groups for {len(s)} rows")
    if len(np.unique(fold)) < 2:
        raise ValueError("crossfit needs at least two validation videos (clips)")
    raw = score_values({t: s.outputs[t] for t in s.tasks}, s, None)
    pf_all = fit_fn(s, cfg)
    optimistic = score_values(apply_postfit(s, pf_all), s, pf_all.au_thresholds)
    values, thr, folds = crossfit_folds(fold, lambda _: s, cfg, fit_fn)  # leave one video (clip) out
    honest = score_values(values, s, thr)
    return CrossfitResult(optimistic, honest, raw, pf_all, folds)


def crossfit_folds(fold: np.ndarray, series_of: Callable[[int], Series], cfg: CrossfitConfig = CrossfitConfig(),
                   fit_fn: FitFn = fit_postfit) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[int, PostFit]]:
    """Fold by fold (`fold`: a fold id per row): the post-processing fitted on the OTHER folds'
    rows of `series_of(f)` (the outputs that fold uses, e.g. its epoch or its blend weights,
    row-aligned with `fold`) and applied to the fold's rows. Returns the pooled per-task
    values, the per-row AU thresholds ([N, 12], None without AU) and each fold's PostFit;
    score them with `score_values(values, series, thr)`."""
    values: dict[str, np.ndarray] = {}
    thr = None
    fits: dict[int, PostFit] = {}
    for f in np.unique(fold):
        s = series_of(int(f))
        inside = fold == f
        pf = fit_fn(s.take(np.flatnonzero(~inside)), cfg)
        fits[int(f)] = pf
        for t, a in apply_postfit(s.take(np.flatnonzero(inside)), pf).items():
            values.setdefault(t, np.zeros((len(fold),) + a.shape[1:]))[inside] = a
        if "au" in s.tasks:
            if thr is None:
                thr = np.full((len(fold), s.outputs["au"].shape[1]), 0.5)
            if pf.au_thresholds is not None:
                thr[inside] = np.asarray(pf.au_thresholds)
    return values, thr, fits


def apply_to(outputs: Any, pf: PostFit) -> dict[str, np.ndarray]:
    """Apply a PostFit (e.g. fitted on all validation videos) to other outputs (e.g. test)."""
    vid, fr = np.asarray(outputs.video_idx), np.asarray(outputs.frame)
    res = {}
    for t in TASK_NAMES:
        a = getattr(outputs, t)
        if a is not None:
            k, w = pf.smooth.get(t, ("box", 1))
            res[t] = smooth(a, vid, fr, k, w)
    return res
