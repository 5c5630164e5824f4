"""Per-frame model outputs (probabilities and values), their alignment with labels, scoring.

`FrameOutputs` is what a run produces for any set of frames: VA values in [-1, 1], the 8
EXPR probabilities and the 12 AU probabilities (a task the run did not train is None).
Several runs' outputs for the same frames average into an ensemble (`mean_outputs`).
Decisions (EXPR class, AU 0/1) come from `decide`; fitted post-processing and
`score_against` live in `abaw.pipeline.train.postprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from abaw.safeload import load_npz
from abaw.data.annotations import Annotations
from abaw.data.labels import N_AU, TASKS, image_name
from abaw.errors import AbawError
from abaw.metrics import MTLScore, mtl_score
from abaw.pipeline.train.dataset import Labels


@dataclass(frozen=True, eq=False)
class FrameOutputs:
    """Outputs for N frames: row i is frame `frame[i]` of video `videos[video_idx[i]]`."""

    videos: tuple[str, ...]
    video_idx: np.ndarray  # int32 [N]; rows grouped by video, sorted by frame
    frame: np.ndarray  # int32 [N]
    va: np.ndarray | None = None  # float32 [N, 2] valence, arousal
    expr: np.ndarray | None = None  # float32 [N, 8] class probabilities
    au: np.ndarray | None = None  # float32 [N, 12] probabilities of each AU being active

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if getattr(self, t) is not None)

    def images(self) -> list[str]:
        return [image_name(self.videos[v], int(f)) for v, f in zip(self.video_idx, self.frame)]

    def with_values(self, **arrays: np.ndarray | None) -> FrameOutputs:
        return replace(self, **arrays)

    def only(self, tasks: tuple[str, ...]) -> FrameOutputs:
        """The same outputs with the tasks not in `tasks` dropped (e.g. those without a loss)."""
        return replace(self, **{t: None for t in TASKS if t not in tasks})

    def take(self, rows: np.ndarray) -> FrameOutputs:
        """The outputs of the given rows (in that order)."""
        return FrameOutputs(self.videos, self.video_idx[rows], self.frame[rows],
                            **{t: (None if getattr(self, t) is None else getattr(self, t)[rows]) for t in TASKS})

    def save(self, path) -> None:
        """Save as a compressed .npz (atomic)."""
        from abaw.io import atomic_write

        arrays = {"videos": np.asarray(self.videos, dtype=str), "video_idx": self.video_idx, "frame": self.frame}
        for t in self.tasks:
            arrays[t] = getattr(self, t)
        with atomic_write(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path) -> FrameOutputs:
        with load_npz(path) as z:
            return cls(videos=tuple(str(v) for v in z["videos"]), video_idx=z["video_idx"], frame=z["frame"],
                       **{t: (z[t] if t in z.files else None) for t in TASKS})


def mean_outputs(outputs: list[FrameOutputs]) -> FrameOutputs:
    """Ensemble: mean VA values and mean probabilities over runs with identical frames.

    A task is averaged over the runs that predict it (None if none does).
    """
    if not outputs:
        raise AbawError("mean_outputs: no outputs")
    first = outputs[0]
    for o in outputs[1:]:
        if o.videos != first.videos or not np.array_equal(o.video_idx, first.video_idx) \
                or not np.array_equal(o.frame, first.frame):
            raise AbawError("mean_outputs: outputs cover different frames")
    arrays = {}
    for t in TASKS:
        parts = [getattr(o, t) for o in outputs if getattr(o, t) is not None]
        arrays[t] = np.mean(parts, axis=0).astype(np.float32) if parts else None
    return replace(first, **arrays)


SPACES = ("prob", "logit")


def weight_matrix(weights, n: int, task: str = "") -> np.ndarray:
    """Blend weights as an array: [n] (one per run) or [n, C] (one per run and output column,
    e.g. per AU), every column non-negative and summing to 1."""
    try:
        w = np.asarray(weights, np.float64)
    except (TypeError, ValueError):
        w = np.zeros(0)
    if w.ndim not in (1, 2) or len(w) != n or not n or (w < 0).any() or (np.abs(w.sum(0) - 1.0) > 1e-6).any():
        raise AbawError(f"combine {task}: need one non-negative weight (or one per column) per run, summing to 1 "
                        f"(got {np.asarray(weights, dtype=object).tolist()})")
    return w


def weights_json(weights) -> list:
    """Blend weights of one task as plain JSON numbers (a float or a list of floats per run)."""
    return [[float(x) for x in w] if np.ndim(w) else float(w) for w in weights]


def weights_from_json(values) -> tuple:
    """Inverse of `weights_json`: per run a float, or a tuple of floats (per column)."""
    return tuple(tuple(float(x) for x in w) if isinstance(w, (list, tuple)) else float(w) for w in values)


def format_weight(w) -> str:
    """A run's blend weight for people: `0.40`, or per column `0.40 (0.00-1.00 per AU)`."""
    if not np.ndim(w):
        return f"{float(w):.2f}"
    a = np.asarray(w, np.float64)
    return f"{a.mean():.2f} ({a.min():.2f}-{a.max():.2f} per AU)"


def combine(task: str, arrays: list[np.ndarray], weights, space: str = "prob") -> np.ndarray:
    """Weighted mean of several runs' outputs of one task (weights >= 0, summing to 1; one per
    run, or one per run and output column [runs, C], e.g. per AU).

    `prob`: VA values and EXPR/AU probabilities averaged as they are; `logit`: EXPR
    log-probabilities (then softmax) and AU logits (then sigmoid) averaged. VA values are
    averaged as values in both spaces. One run with weight 1 returns its outputs unchanged.
    """
    if space not in SPACES:
        raise AbawError(f"space must be one of {', '.join(SPACES)}, not {space!r}")
    w = weight_matrix(weights, len(arrays), task)
    if len(arrays) == 1:
        return np.asarray(arrays[0], np.float32)
    x = np.stack([np.asarray(a, np.float64) for a in arrays])
    if w.ndim == 2 and w.shape[1] != x.shape[-1]:
        raise AbawError(f"combine {task}: {w.shape[1]} weights per run for {x.shape[-1]} output columns")
    if w.ndim == 2 and task == "expr":
        raise AbawError("combine expr: per-column weights are for AU and VA (EXPR classes share one weight)")

    def mean(z: np.ndarray) -> np.ndarray:
        return np.tensordot(w, z, 1) if w.ndim == 1 else np.einsum("mc,m...c->...c", w, z)

    if space == "prob" or task == "va":
        return mean(x).astype(np.float32)
    p = np.clip(x, 1e-7, 1 - 1e-7)
    if task == "au":
        z = mean(np.log(p) - np.log1p(-p))
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = mean(np.log(p))
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


def align_annotations(outputs: FrameOutputs, ann: Annotations) -> tuple[np.ndarray, Labels]:
    """Rows of `outputs` for every annotated frame, and the labels in that order.

    Every annotated frame must have an output (exact (video, frame) match), else AbawError.
    """
    index = {v: i for i, v in enumerate(outputs.videos)}
    vmap = np.array([index.get(v, -1) for v in ann.videos], dtype=np.int64)
    tv = vmap[ann.video_idx] if len(ann) else np.zeros(0, np.int64)
    okeys = (outputs.video_idx.astype(np.int64) << 32) | outputs.frame.astype(np.int64)
    order = np.argsort(okeys, kind="stable")
    sk = okeys[order]
    akeys = (np.maximum(tv, 0) << 32) | ann.frame.astype(np.int64)
    pos = np.minimum(np.searchsorted(sk, akeys), max(len(sk) - 1, 0))
    ok = (tv >= 0) & (sk[pos] == akeys if len(sk) else False)
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        ex = ", ".join(image_name(ann.videos[ann.video_idx[i]], int(ann.frame[i])) for i in bad[:5])
        raise AbawError(f"{len(bad)} of {len(ann)} annotated frames have no output (e.g. {ex})")
    return order[pos], Labels.from_annotations(ann)


def decide(outputs: FrameOutputs, au_thresholds=None
           ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(VA values, EXPR class = argmax, AU 0/1 = probability >= threshold) per frame."""
    va = None if outputs.va is None else np.clip(outputs.va, -1.0, 1.0)
    expr = None if outputs.expr is None else outputs.expr.argmax(1).astype(np.int64)
    au = None
    if outputs.au is not None:
        thr = np.full(N_AU, 0.5) if au_thresholds is None else np.asarray(au_thresholds, dtype=np.float64)
        au = (outputs.au >= thr[None, :]).astype(np.int8)
    return va, expr, au


def score_outputs(outputs: FrameOutputs, labels: Labels, au_thresholds=None) -> MTLScore:
    """The MTL metric of outputs aligned row by row with `labels` (tasks the outputs have).

    EXPR: argmax class; AU: probability >= threshold (0.5, or one per AU).
    """
    if len(outputs) != len(labels):
        raise ValueError(f"score_outputs: {len(outputs)} outputs vs {len(labels)} labels")
    va, expr, au = decide(outputs, au_thresholds)
    return mtl_score(
        va, labels.va if va is not None else None, labels.va_valid,
        expr, labels.expr if expr is not None else None, labels.expr_valid,
        au, labels.au if au is not None else None, labels.au_valid,
    )
