"""Post-processing fitted on validation: temporal smoothing and per-AU thresholds.

- Smoothing: per task (VA values, EXPR and AU probabilities) a kernel (`box` moving
  average, `gaussian`, `median`) and a window, over the frames of the *same video* whose
  frame numbers lie within +-window//2 of the frame (frame-number distance, so gaps are
  respected; never across videos). Chosen on validation from `kernels` x `windows`
  (window 1 = off). The kernels live in `abaw.pipeline.crossfit` (one implementation).
- Per-AU thresholds: the decision threshold of each AU maximising its validation F1 on a
  grid (0.05 ... 0.95), fitted jointly with the AU smoothing (after it, for every
  candidate kernel and window: HSEmotion's trick).

`fit_postprocess` reports the score before and after each step; `apply_postprocess` and
`abaw.pipeline.train.outputs.decide` apply a fitted `PostProcess` to any outputs (for
ensembles: average the runs' outputs, refit on validation, apply on test). Scores on the
frames the post-processing was fitted on are optimistic: `abaw.pipeline.train.honest`
gives the cross-fitted estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from abaw.data.labels import N_AU
from abaw.metrics import MTLScore
from abaw.pipeline.crossfit import GRID, KERNELS, WINDOWS, CrossfitConfig, fit_postfit, fit_thresholds, make_series, smooth
from abaw.pipeline.train.dataset import Labels
from abaw.pipeline.train.outputs import (
    FrameOutputs,
    align_annotations,
    decide,
    score_outputs,
)

DEFAULT_WINDOWS = WINDOWS
DEFAULT_KERNELS = KERNELS
THRESHOLD_GRID = GRID


@dataclass(frozen=True)
class PostProcess:
    """Fitted post-processing of one run or ensemble (saved as JSON)."""

    au_thresholds: tuple[float, ...] | None = None  # one per AU; None = 0.5
    smooth_va: int = 1  # smoothing windows in frames (1 = none)
    smooth_expr: int = 1
    smooth_au: int = 1
    kernel_va: str = "box"  # box | gaussian | median
    kernel_expr: str = "box"
    kernel_au: str = "box"

    def smoothing(self, task: str) -> tuple[str, int]:
        """(kernel, window) of a task."""
        return getattr(self, f"kernel_{task}"), getattr(self, f"smooth_{task}")

    @classmethod
    def from_postfit(cls, pf: Any, tasks: tuple[str, ...], au_thresholds: bool = True) -> PostProcess:
        """From a crossfit `PostFit` (kernel and window per task, AU thresholds)."""
        chosen = {t: pf.smooth.get(t, ("box", 1)) for t in tasks}
        return cls(au_thresholds=pf.au_thresholds if au_thresholds else None,
                   **{f"smooth_{t}": w for t, (_, w) in chosen.items()},
                   **{f"kernel_{t}": k for t, (k, _) in chosen.items()})


def smooth_series(values: np.ndarray, video_idx: np.ndarray, frame: np.ndarray, window: int,
                  kernel: str = "box") -> np.ndarray:
    """`values` [N, C] smoothed over frames within +-window//2 in the same video (dtype kept)."""
    values = np.asarray(values)
    if window <= 1 or len(values) == 0:
        return values.copy()
    return smooth(values, np.asarray(video_idx), np.asarray(frame), kernel, window).astype(values.dtype)


def apply_postprocess(outputs: FrameOutputs, pp: PostProcess) -> FrameOutputs:
    """Outputs after `pp`'s smoothing (thresholds are applied by `decide`)."""
    arrays: dict[str, Any] = {}
    for t in ("va", "expr", "au"):
        a = getattr(outputs, t)
        kernel, w = pp.smoothing(t)
        if a is not None and w > 1:
            arrays[t] = smooth_series(a, outputs.video_idx, outputs.frame, w, kernel)
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
    return fit_thresholds(np.asarray(prob), np.asarray(true), m, grid)


def score_summary(outputs: FrameOutputs, labels: Labels, thr=None, rows: np.ndarray | None = None) -> dict[str, Any]:
    """`MTLScore.summary()` of `outputs` (or `outputs.take(rows)`) against `labels`."""
    return score_outputs(outputs if rows is None else outputs.take(rows), labels, thr).summary()


def fit_postprocess(outputs: FrameOutputs, labels: Labels, au_thresholds: bool = True, smoothing: bool = True,
                    windows: tuple[int, ...] = DEFAULT_WINDOWS, rows: np.ndarray | None = None,
                    kernels: tuple[str, ...] = DEFAULT_KERNELS) -> tuple[PostProcess, list[dict[str, Any]]]:
    """Fit smoothing (kernel and window per task) and AU thresholds on validation outputs.

    `labels` are aligned with `outputs` row by row, or with `outputs.take(rows)` when
    `rows` is given (then smoothing still uses every frame of `outputs` as context).
    Returns the PostProcess and the steps with the score before and after each:
    `raw` -> `au_thresholds` (thresholds on raw probabilities) -> `smoothing` (kernel and
    window per task, AU thresholds fitted jointly after smoothing).
    """
    fit_thr = au_thresholds and outputs.au is not None and labels.au_valid.any()
    steps = [{"step": "raw", **score_summary(outputs, labels, None, rows)}]
    if fit_thr:
        sel = outputs if rows is None else outputs.take(rows)
        thr = tuple(float(x) for x in fit_au_thresholds(sel.au, labels.au, labels.au_valid))
        steps.append({"step": "au_thresholds", "au_thresholds": list(thr), **score_summary(outputs, labels, thr, rows)})
    pp = PostProcess(au_thresholds=thr if fit_thr else None)
    if smoothing:
        cfg = CrossfitConfig(kernels=tuple(kernels), windows=tuple(windows), thresholds=bool(fit_thr))
        series = make_series(outputs, labels, cfg, rows)
        pf = fit_postfit(series, cfg)
        chosen = {t: pf.smooth.get(t, ("box", 1)) for t in outputs.tasks}
        pp = PostProcess.from_postfit(pf, outputs.tasks, bool(fit_thr))
        steps.append({"step": "smoothing", "windows": {t: w for t, (_, w) in chosen.items()},
                      "kernels": {t: k for t, (k, _) in chosen.items()},
                      **score_summary(apply_postprocess(outputs, pp), labels, pp.au_thresholds, rows)})
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
