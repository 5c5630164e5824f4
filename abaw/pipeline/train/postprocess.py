"""Post-processing fitted on validation: temporal smoothing and per-AU thresholds.

- Smoothing: a centred moving average of each task's outputs (VA values, EXPR and AU
  probabilities) over the frames of the *same video* whose frame numbers lie within
  +-window//2 of the frame (frame-number distance, so gaps are respected; never across
  videos). One window per task, chosen on validation from `windows` (1 = off).
- Per-AU thresholds: the decision threshold of each AU maximising its validation F1 on a
  grid (0.05 ... 0.95), fitted after smoothing (HSEmotion's trick).

`fit_postprocess` reports the score before and after each step; `apply_postprocess` and
`abaw.pipeline.train.outputs.decide` apply a fitted `PostProcess` to any outputs (for ensembles: average the runs'
outputs, refit on validation, apply on test).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from abaw.data.labels import N_AU
from abaw.metrics import MTLScore, mtl_score
from abaw.pipeline.train.dataset import Labels
from abaw.pipeline.train.outputs import (
    FrameOutputs,
    align_annotations,
    decide,
    score_outputs,
)

DEFAULT_WINDOWS = (1, 3, 5, 9, 15, 25, 41, 65, 101)
THRESHOLD_GRID = tuple(float(x) for x in np.round(np.arange(0.05, 0.951, 0.05), 2))


@dataclass(frozen=True)
class PostProcess:
    """Fitted post-processing of one run or ensemble (saved as JSON)."""

    au_thresholds: tuple[float, ...] | None = None  # one per AU; None = 0.5
    smooth_va: int = 1  # moving-average windows in frames (1 = none)
    smooth_expr: int = 1
    smooth_au: int = 1


def smooth_series(values: np.ndarray, video_idx: np.ndarray, frame: np.ndarray, window: int) -> np.ndarray:
    """Moving average of `values` [N, C] over frames within +-window//2 in the same video."""
    values = np.asarray(values)
    if window <= 1 or len(values) == 0:
        return values.copy()
    h = window // 2
    order = np.lexsort((frame, video_idx))
    vi, fr, x = video_idx[order], frame[order].astype(np.int64), values[order].astype(np.float64)
    out = np.empty_like(x)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(vi)) + 1, [len(vi)]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        f = fr[a:b]
        lo = np.searchsorted(f, f - h, "left")
        hi = np.searchsorted(f, f + h, "right")
        cs = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x[a:b], axis=0)])
        out[a:b] = (cs[hi] - cs[lo]) / (hi - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    res = np.empty_like(out)
    res[order] = out
    return res.astype(values.dtype)


def apply_postprocess(outputs: FrameOutputs, pp: PostProcess) -> FrameOutputs:
    """Outputs after `pp`'s smoothing (thresholds are applied by `decide`)."""
    arrays: dict[str, Any] = {}
    for t, w in (("va", pp.smooth_va), ("expr", pp.smooth_expr), ("au", pp.smooth_au)):
        a = getattr(outputs, t)
        if a is not None and w > 1:
            arrays[t] = smooth_series(a, outputs.video_idx, outputs.frame, w)
    return replace(outputs, **arrays) if arrays else outputs


def to_predictions(outputs: FrameOutputs, pp: PostProcess | None = None):
    """`abaw.data.submission.Predictions` (one row per frame) after post-processing."""
    from abaw.data.submission import Predictions

    if pp is not None:
        outputs = apply_postprocess(outputs, pp)
    va, expr, au = decide(outputs, None if pp is None else pp.au_thresholds)
    n = len(outputs)
    return Predictions(images=tuple(outputs.images()),
                       va=np.zeros((n, 2), np.float32) if va is None else va.astype(np.float32),
                       expr=np.zeros(n, np.int64) if expr is None else expr,
                       au=np.zeros((n, N_AU), np.int8) if au is None else au)


def fit_au_thresholds(prob: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None,
                      grid: tuple[float, ...] = THRESHOLD_GRID) -> np.ndarray:
    """Per-AU threshold maximising binary F1 on the valid rows (ties: closest to 0.5)."""
    m = np.ones(len(prob), bool) if valid is None else np.asarray(valid, bool)
    p = np.asarray(prob)[m]
    t = np.asarray(true)[m].astype(bool)
    if len(p) == 0:
        return np.full(prob.shape[1], 0.5)
    g = np.asarray(grid, dtype=np.float64)
    f1 = np.empty((len(g), p.shape[1]))
    npos = t.sum(0)
    for i, thr in enumerate(g):
        pred = p >= thr
        tp = (pred & t).sum(0)
        den = pred.sum(0) + npos
        f1[i] = np.divide(2.0 * tp, den, out=np.zeros(p.shape[1]), where=den > 0)
    f1 = f1 - 1e-9 * np.abs(g - 0.5)[:, None]
    return g[f1.argmax(0)]


def score_summary(outputs: FrameOutputs, labels: Labels, thr=None, rows: np.ndarray | None = None) -> dict[str, Any]:
    """`MTLScore.summary()` of `outputs` (or `outputs.take(rows)`) against `labels`."""
    return score_outputs(outputs if rows is None else outputs.take(rows), labels, thr).summary()


def _task_score(outputs: FrameOutputs, labels: Labels, task: str, thr) -> float:
    va, expr, au = decide(outputs, thr)
    if task == "va":
        s = mtl_score(va_pred=va, va_true=labels.va, va_mask=labels.va_valid)
    elif task == "expr":
        s = mtl_score(expr_pred=expr, expr_true=labels.expr, expr_mask=labels.expr_valid)
    else:
        s = mtl_score(au_pred=au, au_true=labels.au, au_mask=labels.au_valid)
    v = getattr(s, task)
    return -np.inf if v is None else float(v)


def fit_postprocess(outputs: FrameOutputs, labels: Labels, au_thresholds: bool = True, smoothing: bool = True,
                    windows: tuple[int, ...] = DEFAULT_WINDOWS, rows: np.ndarray | None = None
                    ) -> tuple[PostProcess, list[dict[str, Any]]]:
    """Fit smoothing windows and AU thresholds on validation outputs.

    `labels` are aligned with `outputs` row by row, or with `outputs.take(rows)` when
    `rows` is given (then smoothing still uses every frame of `outputs` as context).
    Returns the PostProcess and the steps with the score before and after each:
    `raw` -> `au_thresholds` (thresholds on raw probabilities) -> `smoothing` (windows per
    task, thresholds refitted on the smoothed probabilities).
    """
    fit_thr = au_thresholds and outputs.au is not None and labels.au_valid.any()

    def sel(out: FrameOutputs) -> FrameOutputs:
        return out if rows is None else out.take(rows)

    def thresholds(out: FrameOutputs):
        if not fit_thr:
            return None
        return tuple(float(x) for x in fit_au_thresholds(sel(out).au, labels.au, labels.au_valid))

    steps = [{"step": "raw", **score_summary(outputs, labels, None, rows)}]
    thr = thresholds(outputs)
    pp = PostProcess(au_thresholds=thr)
    if fit_thr:
        steps.append({"step": "au_thresholds", "au_thresholds": list(thr), **score_summary(outputs, labels, thr, rows)})
    if smoothing:
        chosen: dict[str, int] = {}
        for task in outputs.tasks:
            if not labels.valid(task).any():
                chosen[task] = 1
                continue
            best, best_w = -np.inf, 1
            for w in sorted(set(windows) | {1}):
                sm = apply_postprocess(outputs, PostProcess(**{f"smooth_{task}": w}))
                t = thresholds(sm) if task == "au" else None
                sc = _task_score(sel(sm), labels, task, t)
                if sc > best + 1e-12:
                    best, best_w = sc, w
            chosen[task] = best_w
        pp = PostProcess(smooth_va=chosen.get("va", 1), smooth_expr=chosen.get("expr", 1),
                         smooth_au=chosen.get("au", 1))
        sm = apply_postprocess(outputs, pp)
        thr = thresholds(sm)
        pp = replace(pp, au_thresholds=thr)
        steps.append({"step": "smoothing", "windows": chosen, **score_summary(sm, labels, thr, rows)})
    return pp, steps


def fit_postprocess_annotations(outputs: FrameOutputs, ann, **kwargs: Any) -> tuple[PostProcess, list[dict[str, Any]]]:
    """`fit_postprocess` against an `Annotations` (every annotated frame needs an output);
    e.g. refit on validation for an ensemble: `fit_postprocess_annotations(mean_outputs(outs), val_ann)`."""
    rows, labels = align_annotations(outputs, ann)
    return fit_postprocess(outputs, labels, rows=rows, **kwargs)


def score_against(outputs: FrameOutputs, ann, postprocess: PostProcess | None = None) -> MTLScore:
    """Score outputs on every frame of `ann` (after `postprocess`'s smoothing and thresholds if given)."""
    thr = None
    if postprocess is not None:
        outputs = apply_postprocess(outputs, postprocess)
        thr = postprocess.au_thresholds
    rows, labels = align_annotations(outputs, ann)
    return score_outputs(outputs.take(rows), labels, thr)
