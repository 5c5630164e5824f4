"""Labels aligned with cached features, sequences (segments) and windows, batches.

Alignment is by exact `(video id, frame number)` keys: a labelled frame uses the cached
feature row of the same video and frame, never a neighbour or a prefix-matching video.
A labelled frame without a usable feature (video not cached, frame not cached, or no
face found there) is *missing*: an error listing the count and examples, or, with
`allow_missing=True`, dropped and reported in `FrameSet.missing`.

Sequences: the frames of a `FrameSet` (in frame order within each video) are cut into
*segments*; a new segment starts at every new video and wherever more than `max_gap`
frame numbers are missing between two consecutive frames (`max_gap=None`: never on a
gap). Windows never cross a segment boundary, so no window spans two videos or a long
gap; inside a segment a window may skip up to `max_gap` missing frame numbers (faces
lost for a moment, unlabelled frames), and positions inside a window are the order of
the available frames, not their frame numbers.

Context (`context_frames`): windows are built over the labelled frames themselves
(`labelled`, the default), or over every cached face frame of the labelled videos
(`dense`: positions are consecutive cached frames, unlabelled ones carry invalid labels,
so losses and scores only use the labelled ones). A FrameSet's `targets` are the
positions whose outputs are wanted (the labelled ones of a dense context; None: all).

- Evaluation windows (`eval_windows`) tile every segment with non-overlapping windows,
  so every frame is predicted exactly once; the last window of a segment is padded
  (position -1, mask False), never filled by repeating frames or labels.
  `strided_windows(segments, window, step)` does the same over every `step`-th frame of
  each segment, in `step` phase-shifted passes (the training time scale on denser frames,
  see `abaw.pipeline.train.timescale`).
- Training windows (`train_windows`) start at a random phase each epoch and step by
  `stride`; the first and last windows of a segment are aligned to its ends (they may
  overlap their neighbours); segments shorter than the window give one padded window.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from abaw.cache.store import FeatureTable
from abaw.data.annotations import Annotations
from abaw.data.labels import image_name
from abaw.errors import AbawError

DEFAULT_MAX_GAP = 30


@dataclass(frozen=True, eq=False)
class Labels:
    """Per-frame labels with validity masks (invalid codes kept as in `Annotations`)."""

    va: np.ndarray  # float32 [N, 2]
    expr: np.ndarray  # int64 [N]
    au: np.ndarray  # int8 [N, 12]
    va_valid: np.ndarray  # bool [N]
    expr_valid: np.ndarray
    au_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.expr)

    @classmethod
    def from_annotations(cls, ann: Annotations, rows: np.ndarray | None = None) -> Labels:
        r = slice(None) if rows is None else rows
        return cls(va=ann.va[r], expr=ann.expr[r], au=ann.au[r], va_valid=ann.va_valid[r],
                   expr_valid=ann.expr_valid[r], au_valid=ann.au_valid[r])

    def take(self, idx: np.ndarray) -> Labels:
        return Labels(self.va[idx], self.expr[idx], self.au[idx], self.va_valid[idx], self.expr_valid[idx],
                      self.au_valid[idx])

    def valid(self, task: str) -> np.ndarray:
        return {"va": self.va_valid, "expr": self.expr_valid, "au": self.au_valid}[task]

    def counts(self) -> dict[str, int]:
        return {"frames": len(self), "va": int(self.va_valid.sum()), "expr": int(self.expr_valid.sum()),
                "au": int(self.au_valid.sum())}


@dataclass(frozen=True)
class MissingReport:
    """Labelled frames that have no usable cached feature."""

    labelled: int
    missing: int
    no_video: int  # the video is not in the cache (or lacks a backbone)
    no_frame: int  # the video is cached but not this frame
    no_face: int  # the frame is cached but no face was found
    examples: tuple[str, ...] = ()

    def message(self, what: str = "labelled frames") -> str:
        return (f"{self.missing} of {self.labelled} {what} have no cached feature "
                f"({self.no_video} in videos missing from the cache, {self.no_frame} frames not cached, "
                f"{self.no_face} without a face), e.g. {', '.join(self.examples)}")

    def to_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "missing": self.missing, "no_video": self.no_video,
                "no_frame": self.no_frame, "no_face": self.no_face, "examples": list(self.examples)}


@dataclass(frozen=True, eq=False)
class FrameSet:
    """Frames of a feature table that form sequences, optionally with labels.

    Position i is table row `rows[i]`; positions are grouped by video and sorted by frame.
    `segments[s] = (start, end)` are position ranges that windows never cross.
    """

    table: FeatureTable
    rows: np.ndarray  # int64 [M]
    segments: np.ndarray  # int64 [S, 2]
    labels: Labels | None = None
    missing: MissingReport | None = None
    max_gap: int | None = DEFAULT_MAX_GAP
    targets: np.ndarray | None = None  # positions whose outputs are wanted (None: all)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def video_idx(self) -> np.ndarray:
        """Index into `table.videos` of every position."""
        return self.table.video_idx[self.rows]

    @property
    def frame(self) -> np.ndarray:
        return self.table.frame[self.rows]

    def images(self) -> list[str]:
        vids = self.table.videos
        return [image_name(vids[v], int(f)) for v, f in zip(self.video_idx, self.frame)]


def split_segments(video_idx: np.ndarray, frame: np.ndarray, max_gap: int | None) -> np.ndarray:
    """[S, 2] (start, end) ranges: breaks at a new video or more than `max_gap` missing frames."""
    n = len(frame)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    brk = np.diff(video_idx) != 0
    if max_gap is not None:
        brk |= (np.diff(frame.astype(np.int64)) - 1) > max_gap
    starts = np.concatenate([[0], np.flatnonzero(brk) + 1]).astype(np.int64)
    ends = np.concatenate([starts[1:], [n]]).astype(np.int64)
    return np.stack([starts, ends], axis=1)


def _table_keys(table: FeatureTable) -> np.ndarray:
    keys = (table.video_idx.astype(np.int64) << 32) | table.frame.astype(np.int64)
    if len(keys) > 1 and not (np.diff(keys) > 0).all():
        raise AbawError("feature table rows are not grouped by video and sorted by frame")
    return keys


def align_labels(table: FeatureTable, ann: Annotations, allow_missing: bool = False,
                 max_gap: int | None = DEFAULT_MAX_GAP, what: str = "labelled frames") -> FrameSet:
    """The labelled frames of `ann` that have a cached feature with a face, as a FrameSet.

    Missing frames raise `AbawError` (count + examples) unless `allow_missing`.
    """
    index = {v: i for i, v in enumerate(table.videos)}
    vmap = np.array([index.get(v, -1) for v in ann.videos], dtype=np.int64)
    tv = vmap[ann.video_idx] if len(ann) else np.zeros(0, np.int64)
    tkeys = _table_keys(table)
    akeys = (np.maximum(tv, 0) << 32) | ann.frame.astype(np.int64)
    pos = np.searchsorted(tkeys, akeys)
    pos_c = np.minimum(pos, max(len(tkeys) - 1, 0))
    has_video = tv >= 0
    found = has_video & (pos < len(tkeys)) & (tkeys[pos_c] == akeys if len(tkeys) else False)
    face = np.zeros(len(ann), bool)
    face[found] = table.face[pos_c[found]]
    ok = found & face
    n_missing = int((~ok).sum())
    report = None
    if n_missing:
        bad = np.flatnonzero(~ok)[:5]
        examples = tuple(image_name(ann.videos[ann.video_idx[i]], int(ann.frame[i])) for i in bad)
        report = MissingReport(labelled=len(ann), missing=n_missing, no_video=int((~has_video).sum()),
                               no_frame=int((has_video & ~found).sum()), no_face=int((found & ~face).sum()),
                               examples=examples)
        if not allow_missing:
            raise AbawError(report.message(what) + " (extract them, or pass --allow-missing to skip them)")
    keep = np.flatnonzero(ok)
    rows = pos_c[keep].astype(np.int64)
    order = np.argsort(rows, kind="stable")
    rows, keep = rows[order], keep[order]
    labels = Labels.from_annotations(ann, keep)
    segs = split_segments(table.video_idx[rows], table.frame[rows], max_gap)
    return FrameSet(table=table, rows=rows, segments=segs, labels=labels, missing=report, max_gap=max_gap)


def frames_for_prediction(table: FeatureTable, rows: np.ndarray | None = None,
                          max_gap: int | None = DEFAULT_MAX_GAP) -> FrameSet:
    """An unlabelled FrameSet over `rows` of the table (default: every frame with a face)."""
    if rows is None:
        rows = np.flatnonzero(table.face)
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) and (rows[0] < 0 or rows[-1] >= len(table)):
        raise AbawError("frames_for_prediction: row index out of range")
    segs = split_segments(table.video_idx[rows], table.frame[rows], max_gap)
    return FrameSet(table=table, rows=rows, segments=segs, max_gap=max_gap)


CONTEXTS = ("labelled", "dense")


def context_frames(fs: FrameSet, context: str = "labelled") -> FrameSet:
    """The frames windows are built over for the labelled FrameSet `fs` (module docstring).

    `dense`: every face frame of `fs`'s videos in its table, segments split at `fs.max_gap`,
    labels invalid except at `targets` (the positions of `fs`'s frames, in `fs`'s order).
    """
    if context == "labelled":
        return fs
    if context != "dense":
        raise AbawError(f"context {context!r}: expected one of {', '.join(CONTEXTS)}")
    if fs.labels is None:
        raise AbawError("context_frames: a labelled FrameSet is needed")
    t = fs.table
    rows = np.flatnonzero(t.face & np.isin(t.video_idx, np.unique(fs.video_idx)))
    targets = np.searchsorted(rows, fs.rows)
    lb, n = fs.labels, len(rows)
    va, expr = np.full((n, 2), -5.0, np.float32), np.full(n, -1, np.int64)
    au = np.full((n,) + lb.au.shape[1:], -1, np.int8)
    va[targets], expr[targets], au[targets] = lb.va, lb.expr, lb.au
    valid = {}
    for name in ("va_valid", "expr_valid", "au_valid"):
        valid[name] = np.zeros(n, bool)
        valid[name][targets] = getattr(lb, name)
    segs = split_segments(t.video_idx[rows], t.frame[rows], fs.max_gap)
    return FrameSet(table=t, rows=rows.astype(np.int64), segments=segs, labels=Labels(va, expr, au, **valid),
                    missing=fs.missing, max_gap=fs.max_gap, targets=targets.astype(np.int64))


def eval_windows(segments: np.ndarray, window: int) -> np.ndarray:
    """Non-overlapping windows [n, window] of positions covering every frame once (-1 = padding)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    s, e = segments[:, 0], segments[:, 1]
    nwin = -(-(e - s) // window)
    if nwin.sum() == 0:
        return np.zeros((0, window), np.int64)
    seg_of = np.repeat(np.arange(len(s)), nwin)
    k = np.arange(int(nwin.sum())) - np.repeat(np.cumsum(nwin) - nwin, nwin)
    pos = (s[seg_of] + k * window)[:, None] + np.arange(window)[None, :]
    pos[pos >= e[seg_of][:, None]] = -1
    return pos.astype(np.int64)


def strided_windows(segments: np.ndarray, window: int, step: int = 1) -> np.ndarray:
    """`eval_windows` over every `step`-th position of each segment, one pass per phase.

    Pass p of a segment [s, e) holds positions s+p, s+p+step, ...; every position is in
    exactly one window, and window neighbours are `step` positions apart.
    """
    if step <= 1:
        return eval_windows(segments, window)
    parts = [np.arange(s + p, e, step) for s, e in segments.tolist() for p in range(min(step, e - s))]
    if not parts:
        return np.zeros((0, window), np.int64)
    perm = np.concatenate(parts).astype(np.int64)
    lens = np.array([len(x) for x in parts], np.int64)
    ends = np.cumsum(lens)
    win = eval_windows(np.stack([ends - lens, ends], axis=1), window)
    return np.where(win >= 0, perm[np.maximum(win, 0)], -1).astype(np.int64)


def labelled_windows(wins: np.ndarray, fs: FrameSet) -> np.ndarray:
    """The windows holding at least one of `fs.targets` (all windows when targets is None)."""
    if fs.targets is None or not len(wins):
        return wins
    wanted = np.zeros(len(fs) + 1, bool)
    wanted[fs.targets] = True
    return wins[wanted[wins].any(1)]  # -1 (padding) indexes the trailing False


def train_windows(segments: np.ndarray, window: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Training windows [n, window] (unshuffled); see the module docstring."""
    if window < 1 or stride < 1:
        raise ValueError("window and stride must be >= 1")
    starts: list[np.ndarray] = []
    padded: list[int] = []
    for s, e in segments.tolist():
        n = e - s
        if n <= window:
            padded.append(s)
            continue
        phase = int(rng.integers(0, stride))
        st = np.arange(s + phase, e - window + 1, stride)
        ends = [st] if len(st) else []
        if phase > 0 or not len(st):
            ends.insert(0, np.array([s]))
        if not len(st) or st[-1] + window < e:
            ends.append(np.array([e - window]))
        starts.append(np.unique(np.concatenate(ends)))
    full = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    out = full[:, None] + np.arange(window)[None, :]
    if padded:
        ends_of = dict(map(tuple, segments.tolist()))
        ps = np.array(padded, dtype=np.int64)
        pp = ps[:, None] + np.arange(window)[None, :]
        pe = np.array([ends_of[x] for x in padded], dtype=np.int64)
        pp[pp >= pe[:, None]] = -1
        out = np.concatenate([out, pp])
    return out.astype(np.int64)


def feature_tensors(table: FeatureTable, keys: tuple[str, ...],
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The table's float16 feature arrays as tensors (shared memory on CPU, one copy on a GPU,
    kept while the table lives: the runs of a search worker reuse it)."""
    out = []
    for k in keys:
        a = table.feats[k]
        dev = torch.device(device)
        if dev.type != "cpu" and (id(a), str(dev)) in _ON_DEVICE:
            out.append(_ON_DEVICE[id(a), str(dev)])
            continue
        t = (torch.from_numpy(a) if a.flags.writeable and a.flags.c_contiguous else torch.tensor(a)).to(dev)
        if dev.type != "cpu":
            _ON_DEVICE[id(a), str(dev)] = t
            weakref.finalize(a, _ON_DEVICE.pop, (id(a), str(dev)), None)
        out.append(t)
    return out


_ON_DEVICE: dict[tuple[int, str], torch.Tensor] = {}  # (id of a table's array, device) -> its device copy


class Batcher:
    """Turns windows of positions into model-ready tensors.

    Features stay float16 in RAM (shared with the table, no copy) until a batch is
    gathered; they are converted to float32 per batch. Pass `features` (from
    `feature_tensors(table, keys, cuda_device)`) to gather on a GPU from one shared copy.
    """

    def __init__(self, fs: FrameSet, keys: tuple[str, ...], device: torch.device | str = "cpu",
                 features: list[torch.Tensor] | None = None, with_labels: bool = True):
        self.device = torch.device(device)
        self.feats = feature_tensors(fs.table, keys) if features is None else features
        self.rows = torch.from_numpy(np.ascontiguousarray(fs.rows)).to(self.feats[0].device)
        self.labels = None
        if fs.labels is not None and with_labels:
            lb = fs.labels
            self.labels = {
                "va": torch.from_numpy(np.ascontiguousarray(lb.va, dtype=np.float32)),
                "expr": torch.from_numpy(np.ascontiguousarray(np.maximum(lb.expr, 0), dtype=np.int64)),
                "au": torch.from_numpy(np.ascontiguousarray(np.maximum(lb.au, 0), dtype=np.float32)),
                "va_valid": torch.from_numpy(np.ascontiguousarray(lb.va_valid)),
                "expr_valid": torch.from_numpy(np.ascontiguousarray(lb.expr_valid)),
                "au_valid": torch.from_numpy(np.ascontiguousarray(lb.au_valid)),
            }

    def __call__(self, pos: np.ndarray) -> dict[str, Any]:
        """`pos` [B, W] positions (-1 = padding) -> feats (list of [B, W, D]), mask, targets."""
        B, W = pos.shape
        p = torch.from_numpy(np.ascontiguousarray(pos))
        mask = p >= 0
        pc = p.clamp_min(0).reshape(-1)
        rows = self.rows[pc.to(self.rows.device)]
        feats = [f.index_select(0, rows).view(B, W, -1).to(self.device, non_blocking=True).float()
                 for f in self.feats]
        out: dict[str, Any] = {"feats": feats, "mask": mask.to(self.device), "pos": p}
        if self.labels is not None:
            lb = self.labels
            for name in ("va", "expr", "au"):
                out[name] = lb[name][pc].view(B, W, *lb[name].shape[1:]).to(self.device)
            for name in ("va_valid", "expr_valid", "au_valid"):
                out[name] = (lb[name][pc].view(B, W) & mask).to(self.device)
        return out

