"""The weights of `abaw blend`: per task, non-negative weights on the simplex grid, scored as
the blend will be delivered (smoothed; AU at thresholds cross-fitted over video folds)."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import numpy as np

from abaw.metrics import per_au_f1
from abaw.pipeline.crossfit import Series, fit_thresholds, task_score
from abaw.pipeline.train.honest import assign_folds
from abaw.pipeline.train.outputs import combine

MAX_GRID = 3000  # simplex points searched exhaustively; beyond: pairwise coordinate search


def simplex_grid(m: int, steps: int) -> np.ndarray:
    """Every weight vector of `m` non-negative multiples of 1/steps summing to 1 [G, m]."""
    pts = [np.diff([0, *c, steps + m]) - 1 for c in itertools.combinations(range(1, steps + m), m - 1)]
    return np.asarray(pts, np.float64).reshape(-1, m) / steps


def search_weights(score: Callable[[np.ndarray], float], m: int, steps: int) -> tuple[float, ...]:
    """Weights maximising `score` on the simplex grid (ties: closest to equal weights)."""
    if m == 1:
        return (1.0,)

    def key(w: np.ndarray) -> float:
        return score(w) - 1e-9 * float(((w - 1 / m) ** 2).sum())

    if math.comb(steps + m - 1, m - 1) <= MAX_GRID:
        grid = simplex_grid(m, steps)
        return tuple(float(x) for x in grid[int(np.argmax([key(w) for w in grid]))])
    # pairwise coordinate search from the grid point nearest equal weights: move 1/steps from j to i while it helps
    w = np.array([steps // m + (i < steps % m) for i in range(m)], np.float64) / steps
    best = key(w)
    for _ in range(50 * m):
        cands = [w + (np.eye(m)[i] - np.eye(m)[j]) / steps for i in range(m) for j in range(m)
                 if i != j and w[j] >= 1 / steps - 1e-12]
        vals = [key(np.clip(c, 0, 1)) for c in cands]
        if not vals or max(vals) <= best + 1e-12:
            break
        best, w = max(vals), np.clip(cands[int(np.argmax(vals))], 0, 1)
    return tuple(float(x) for x in w / w.sum())


def crossfit_au_decisions(v: np.ndarray, s: Series, fold: np.ndarray, grid) -> np.ndarray:
    """AU decisions [N, 12] of probabilities `v` on the rows of `s`, each fold's rows at the
    thresholds fitted on the other folds' rows."""
    dec = np.zeros(v.shape, np.float64)
    for f in np.unique(fold):
        fit, at = fold != f, fold == f
        thr = fit_thresholds(v[fit], s.labels["au"][fit], s.labels["au_valid"][fit], grid)
        dec[at] = v[at] >= thr[None]
    return dec


def au_decisions(v: np.ndarray, s: Series, fold: np.ndarray | None, cfg: Any) -> np.ndarray:
    """AU decisions (0/1) of probabilities `v` on the rows of `s` as the post-processing `cfg`
    will make them: at thresholds cross-fitted over `fold` (None: fitted on these rows), or at
    0.5 when it fits none."""
    valid = s.labels["au_valid"]
    if not (cfg.thresholds and valid.any()):
        return (v >= 0.5).astype(np.float64)
    if fold is not None:
        return crossfit_au_decisions(v, s, fold, cfg.grid)
    return (v >= fit_thresholds(v, s.labels["au"], valid, cfg.grid)[None]).astype(np.float64)


def per_au_weights(f1: np.ndarray, grid: np.ndarray, shared: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Per AU, the grid point of the best F1 (`f1` [G, C] over `grid` [G, m]; ties: closest to the
    `shared` weights), as one tuple of C weights per member."""
    key = f1 - 1e-9 * ((grid - shared[None]) ** 2).sum(1)[:, None]
    w = grid[key.argmax(0)]  # [C, m]
    return tuple(tuple(float(x) for x in col) for col in w.T)


def fit_weights(data: Any, sel: np.ndarray, space: str, steps: int,
                au_folds: int = 0, per_au: bool = False) -> dict[str, tuple]:
    """Per task, the weights scoring best on the labelled rows `sel` of `data` (a `blend.BlendData`).

    Each weight vector is scored as it will be delivered: smoothed (when the post-processing
    smooths), at the best of a few (kernel, window) candidates — each member's own best alone
    and the equal-weight blend's best — applied to the members before blending (exactly the
    smoothed blend for box and gaussian kernels; for median the blend of the members'
    medians). Scored on raw outputs instead, a per-frame member (the linear probe, which gains
    most from smoothing) loses weight to a temporal one that is smooth already. AU, when the
    post-processing fits thresholds: scored at thresholds fitted on those rows (`au_folds` 0),
    or cross-fitted over `au_folds` folds of their videos — per-AU thresholds fitted on the
    scored rows reward the member whose rare-AU scores overfit the split most.

    `per_au`: AU gets one weight vector per AU (each member's weight a tuple of 12): P_AU is the
    mean of per-AU F1s, each depending on its own column only (thresholds and smoothing are per
    column), so every AU takes the grid point of its own best F1 at the smoothing candidate whose
    mean is best (ties: the shared weights). The members differ most on the rare AUs (a deep
    temporal head memorises 3 %-base-rate AUs that a linear probe does not)."""
    s = data.base().take(sel)
    fold = assign_folds(data.clips()[sel], au_folds) if au_folds >= 2 else None
    if fold is not None and fold.max() < 1:
        fold = None  # one video: nothing to cross-fit over
    cands = [("box", 1)] + ([(k, w) for k in data.cfg.kernels for w in data.cfg.windows if w > 1]
                            if data.cfg.smoothing else [])
    out = {}
    for t, arrs in data.arrays.items():
        m = len(arrs)
        if m == 1:
            out[t] = (1.0,)
            continue

        def score(w: np.ndarray, c: tuple[str, int], t: str = t, m: int = m) -> float:
            v = combine(t, [data.smoothed(t, i, *c)[sel] for i in range(m)], w, space).astype(np.float64)
            if t == "au":
                v = au_decisions(v, s, fold, data.cfg)  # scored at 0.5 below
            sc = task_score(t, v, s)
            return -np.inf if sc is None else sc

        def best_smoothing(w: np.ndarray) -> tuple[str, int]:
            vals = [score(w, c) for c in cands]
            return cands[int(np.argmax(vals))]

        short = {best_smoothing(np.eye(m)[i]) for i in range(m)} | {best_smoothing(np.full(m, 1.0 / m)), cands[0]}
        short_list = sorted(short)
        out[t] = search_weights(lambda w, short_list=short_list, score=score: max(score(w, c) for c in short_list),
                                m, steps)
        if t == "au" and per_au and math.comb(steps + m - 1, m - 1) <= MAX_GRID:
            out[t] = _per_au(data, sel, s, fold, space, steps, m, short_list, np.asarray(out[t]))
    return out


def _per_au(data: Any, sel: np.ndarray, s: Series, fold: np.ndarray | None, space: str, steps: int, m: int,
            short_list: list[tuple[str, int]], shared: np.ndarray) -> tuple:
    """`fit_weights`' per-AU weights: the grid's per-AU F1 [G, 12] at each smoothing candidate."""
    grid = simplex_grid(m, steps)
    valid = s.labels["au_valid"]
    if not valid.any():
        return tuple(float(x) for x in shared)
    true = s.labels["au"][valid]
    best, best_f1 = -np.inf, None
    for c in short_list:
        arrs = [data.smoothed("au", i, *c)[sel] for i in range(m)]
        f1 = []
        for w in grid:
            dec = au_decisions(combine("au", arrs, w, space).astype(np.float64), s, fold, data.cfg)
            f1.append(per_au_f1(true, dec[valid] >= 0.5))
        f1 = np.asarray(f1)
        if f1.max(0).mean() > best:
            best, best_f1 = f1.max(0).mean(), f1
    return per_au_weights(best_f1, grid, shared)
