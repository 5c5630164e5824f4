"""The honest validation estimate of a run: nothing is scored on frames that fitted it.

A run's reported validation score is optimistic: the best epoch (early stopping), the
smoothing kernels and windows and the AU thresholds are all chosen on the very frames
they are scored on. Here the validation videos are split into K folds (whole videos,
balanced by labelled frames); for each fold the *other* folds choose the epoch (per task, or by raw
P_MTL with `select=total`, tracked during training by `FoldTracker`) and fit the post-processing
(`abaw.pipeline.crossfit.fit_postfit`, the same search as the run's own), which is then
applied to the fold's videos. The pooled predictions of all folds give the estimate, with
its standard error over validation videos (`se`: a bootstrap of whole videos; another split
of this size would score about that far away by chance).

What it does not cover: the stopping time (patience on all of validation) and choices
made outside the run (a search's choice among configs: `abaw search` reports the honest
score of every config, and the winner's honest score is itself slightly optimistic).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from abaw.data.labels import TASKS
from abaw.pipeline.crossfit import CrossfitConfig, crossfit_folds, make_series, score_values, video_bootstrap_se
from abaw.pipeline.train.dataset import Labels
from abaw.pipeline.train.outputs import FrameOutputs, score_outputs



HONEST_OUTPUTS = "val_outputs_honest.npz"  # a run's validation outputs, each frame at its fold's honest epoch


def assign_folds(video_idx: np.ndarray, k: int) -> np.ndarray:
    """Fold id per row: whole videos, largest first onto the lightest fold (deterministic).
    Pass `clip_ids(...)` instead of video indices to keep the tracks of a clip together."""
    vids, counts = np.unique(np.asarray(video_idx), return_counts=True)
    k = max(1, min(int(k), len(vids)))
    load = np.zeros(k, np.int64)
    fold_of = {}
    for i in np.lexsort((vids, -counts)):
        f = int(np.argmin(load))
        fold_of[int(vids[i])] = f
        load[f] += counts[i]
    return np.array([fold_of[int(v)] for v in video_idx], np.int64)


def crossfit_config(cfg: Any) -> CrossfitConfig:
    """The post-processing search of a TrainConfig, as the cross-fit module spells it."""
    return CrossfitConfig(kernels=tuple(cfg.smooth_kernels), windows=tuple(cfg.smooth_windows),
                          smoothing=bool(cfg.smoothing), thresholds=bool(cfg.au_thresholds))


class FoldTracker:
    """Per fold: the best epoch on the OTHER folds, and that epoch's outputs.

    `per_task=True` (the run's `select=task`): one best epoch per task, by that task's raw
    score; otherwise one epoch for all tasks by raw P_MTL.
    """

    def __init__(self, video_idx: np.ndarray, labels: Labels, folds: int, per_task: bool = False,
                 groups: np.ndarray | None = None):
        self.fold = assign_folds(video_idx if groups is None else groups, folds)  # groups: clip ids
        # the folds of states saved before clip groups (by video: the same as `fold` without groups)
        self._by_video = self.fold if groups is None else assign_folds(video_idx, folds)
        self.groups = video_idx if groups is None else groups  # the units of the standard error
        self.k = int(self.fold.max()) + 1 if len(self.fold) else 0
        self.labels = labels
        self.per_task = bool(per_task)
        self.best_score: list[dict[str, float]] = [{} for _ in range(self.k)]
        self.best_epoch: list[dict[str, int]] = [{} for _ in range(self.k)]
        self.outputs: list[dict[str, np.ndarray] | None] = [None] * self.k

    @property
    def usable(self) -> bool:
        return self.k >= 2

    def update(self, epoch: int, outputs: FrameOutputs, tasks: tuple[str, ...]) -> None:
        """Consider one epoch's raw validation outputs (rows aligned with the labels)."""
        if not self.usable:
            return
        groups = {t: (t,) for t in tasks} if self.per_task else {"total": tuple(tasks)}
        for f in range(self.k):
            rows = np.flatnonzero(self.fold != f)
            sc = score_outputs(outputs.only(tasks).take(rows), self.labels.take(rows))
            for key, members in groups.items():
                v = getattr(sc, key)
                if v is None or not v > self.best_score[f].get(key, -np.inf) + 1e-12:
                    continue
                self.best_score[f][key], self.best_epoch[f][key] = float(v), int(epoch)
                self.outputs[f] = dict(self.outputs[f] or {})
                for t in members:
                    if getattr(outputs, t) is not None:
                        self.outputs[f][t] = getattr(outputs, t).copy()

    def state(self) -> dict[str, Any]:
        """For the resume state (tensors and JSON types)."""
        return {"fold": torch.from_numpy(self.fold), "score": list(self.best_score), "epoch": list(self.best_epoch),
                "outputs": [None if o is None else {t: torch.from_numpy(a) for t, a in o.items()}
                            for o in self.outputs]}

    def load(self, st: dict[str, Any] | None) -> None:
        if not st or len(st.get("score", [])) != self.k:
            return
        saved = st["fold"].numpy() if "fold" in st else self._by_video
        if not np.array_equal(saved, self.fold):
            return  # a state tracked over other folds: it would choose epochs seeing the scored rows
        as_dict = lambda x: dict(x) if isinstance(x, dict) else {"total": x}  # noqa: E731  (older states: P_MTL)
        self.best_score = [{k: float(v) for k, v in as_dict(x).items()} for x in st["score"]]
        self.best_epoch = [{k: int(v) for k, v in as_dict(x).items()} for x in st["epoch"]]
        self.outputs = [None if o is None else {t: a.numpy() for t, a in o.items()} for o in st["outputs"]]

    def honest_outputs(self, template: FrameOutputs) -> FrameOutputs | None:
        """Every validation row's outputs at the epoch its fold's OTHER folds chose (None when
        fewer than two folds or no epoch was seen): outputs whose epoch choice never saw the
        row's label, for estimates built on top of the run (`abaw blend`, `search --compose blend`)."""
        if not self.usable or any(o is None for o in self.outputs):
            return None
        arrays = {}
        for t in template.tasks:
            if any(self.outputs[f].get(t) is None for f in range(self.k)):
                return None
            a = np.empty_like(self.outputs[0][t])
            for f in range(self.k):
                inside = self.fold == f
                a[inside] = self.outputs[f][t][inside]
            arrays[t] = a
        return template.with_values(**arrays)

    def estimate(self, template: FrameOutputs, cfg: CrossfitConfig) -> dict[str, Any] | None:
        """The pooled honest scores (None when fewer than two folds or no epoch was seen)."""
        if not self.usable or any(o is None for o in self.outputs):
            return None
        series: dict[tuple, Any] = {}  # folds that chose the same epochs share their (smoothed) outputs

        def series_of(f: int):
            chosen = tuple(sorted(self.best_epoch[f].items()))
            if chosen not in series:
                out = template.with_values(**{t: self.outputs[f].get(t) for t in TASKS})
                series[chosen] = make_series(out, self.labels, cfg)
            return series[chosen]

        values, thr, _ = crossfit_folds(self.fold, series_of, cfg)
        scores = {t: None for t in TASKS} | score_values(values, series_of(0), thr)
        epochs = [dict(e) if self.per_task else e.get("total", 0) for e in self.best_epoch]
        return {"step": "honest", **scores, "se": video_bootstrap_se(values, series_of(0), thr, groups=self.groups),
                "folds": self.k, "fold_epochs": epochs}



__all__ = ["HONEST_OUTPUTS", "FoldTracker", "assign_folds", "crossfit_config"]
