"""The members of a blend and their validation outputs.

A member is one blended model: one run, a seed ensemble (runs averaged with equal weights),
or a k-fold config, whose folds' validation outputs together are out-of-fold; with repeated
k-fold (`abaw search --folds K --repeats R`) every frame is validated by R runs, one per
partition, and its output is their mean.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.data.annotations import Annotations
from abaw.data.labels import TASKS
from abaw.errors import AbawError
from abaw.pipeline.train.honest import HONEST_OUTPUTS
from abaw.pipeline.train.outputs import FrameOutputs, combine


@dataclass(frozen=True)
class Member:
    """One blended model: runs averaged with equal weights (one run, or a k-fold config)."""

    name: str
    runs: tuple[Path, ...]
    tasks: tuple[str, ...]


def frame_keys(o: FrameOutputs) -> list[tuple[str, int]]:
    return list(zip(np.asarray(o.videos, dtype=object)[o.video_idx].tolist(), o.frame.tolist()))


def _concat(outs: list[FrameOutputs]) -> FrameOutputs:
    """Outputs on disjoint videos (k folds) as one, rows grouped by video and sorted by frame."""
    videos = tuple(sorted({v for o in outs for v in o.videos}))
    index = {v: i for i, v in enumerate(videos)}
    vidx = np.concatenate([np.array([index[o.videos[i]] for i in o.video_idx], np.int32) for o in outs])
    frame = np.concatenate([o.frame for o in outs]).astype(np.int32)
    order = np.lexsort((frame, vidx))
    arrays = {t: np.concatenate([getattr(o, t) for o in outs])[order] for t in TASKS
              if all(getattr(o, t) is not None for o in outs)}
    return FrameOutputs(videos, vidx[order], frame[order], **arrays)


def _outputs_path(run: Path, honest: bool) -> Path:
    return run / HONEST_OUTPUTS if honest and (run / HONEST_OUTPUTS).is_file() else run / "val_outputs.npz"


def member_outputs(m: Member, honest: bool = False) -> tuple[FrameOutputs, list[Path]]:
    """The member's raw validation outputs (k-fold runs: out-of-fold, together; repeated k-fold:
    each frame the mean of the R runs that validated it) and the first run of each group of runs
    validated on the same frames (seeds of one fold: averaged) that together cover every frame
    once. `honest`: each run's `val_outputs_honest.npz` (every row at the epoch chosen without its
    fold) where it has one."""
    outs = [FrameOutputs.load(_outputs_path(r, honest)) for r in m.runs]
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(outs):
        groups.setdefault(tuple(frame_keys(o)), []).append(i)
    means = [outs[g[0]].with_values(**{t: combine(t, [getattr(outs[i], t) for i in g], [1 / len(g)] * len(g))
                                       for t in outs[g[0]].tasks}) for g in groups.values()]
    firsts = [m.runs[g[0]] for g in groups.values()]
    if len(means) == 1:
        return means[0], firsts
    scored = [{o.videos[i] for i in np.unique(o.video_idx)} for o in means]
    if not any(a & b for a, b in itertools.combinations(scored, 2)):
        return _concat(means), firsts
    return _repeated(m, means, scored), _cover(firsts, scored)


def _cover(firsts: list[Path], scored: list[set[str]]) -> list[Path]:
    """The groups (in run order) that cover every video once: repeated k-fold's first partition."""
    seen: set[str] = set()
    keep = []
    for r, vids in zip(firsts, scored):
        if not vids & seen:
            keep.append(r)
            seen |= vids
    return keep


def _repeated(m: Member, means: list[FrameOutputs], scored: list[set[str]]) -> FrameOutputs:
    """Repeated k-fold: every video validated by the same number R of groups, on the same frames;
    each frame's outputs averaged over its R groups (each an unseen model)."""
    count: dict[str, int] = {}
    for vids in scored:
        for v in vids:
            count[v] = count.get(v, 0) + 1
    reps = set(count.values())
    if len(reps) != 1:
        raise AbawError(f"{m.name}: its runs' validation frames neither coincide, nor are disjoint, nor cover "
                        f"every video equally often (repeated k-fold); counts {sorted(reps)}")
    r = reps.pop()
    both = _concat(means)  # rows sorted by (video, frame): each frame's R copies adjacent
    n = len(both) // r
    key = np.stack([both.video_idx, both.frame], 1).reshape(n, r, 2)
    if len(both) % r or (key != key[:, :1]).any():
        raise AbawError(f"{m.name}: its repeated k-fold runs validated different frames of the same videos")
    arrays = {t: getattr(both, t).reshape(n, r, -1).mean(1).astype(np.float32) for t in both.tasks}
    return FrameOutputs(both.videos, both.video_idx[::r], both.frame[::r], **arrays)


def member_validation(m: Member, val_ann: Annotations | None) -> tuple[FrameOutputs, Annotations]:
    """The member's raw validation outputs and labels (k-fold runs: out-of-fold, together)."""
    from abaw.pipeline.train.run import run_labels

    out, firsts = member_outputs(m)
    if len(firsts) == 1:
        return out, run_labels(firsts[0], val_ann)
    return out, val_ann or Annotations.concat([run_labels(r) for r in firsts])
