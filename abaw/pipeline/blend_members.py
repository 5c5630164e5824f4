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
from typing import Any

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


def _run_outputs(m: Member, honest: bool) -> list[FrameOutputs]:
    """Each of the member's runs' validation outputs (honest where the run has them), in run order."""
    return [FrameOutputs.load(_outputs_path(r, honest)) for r in m.runs]


def _groups(m: Member, outs: list[FrameOutputs]) -> tuple[list[FrameOutputs], list[Path]]:
    """The member's runs (`outs`, in run order) grouped by the frames they validated (seeds of one
    fold), each group's outputs averaged with equal weights, and the first run of each group."""
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(outs):
        groups.setdefault(tuple(frame_keys(o)), []).append(i)
    means = [outs[g[0]].with_values(**{t: combine(t, [getattr(outs[i], t) for i in g], [1 / len(g)] * len(g))
                                       for t in outs[g[0]].tasks}) for g in groups.values()]
    return means, [m.runs[g[0]] for g in groups.values()]


def _scored(outs: list[FrameOutputs]) -> list[set[str]]:
    return [{o.videos[i] for i in np.unique(o.video_idx)} for o in outs]


def member_outputs(m: Member, honest: bool = False) -> tuple[FrameOutputs, list[Path]]:
    """The member's raw validation outputs (k-fold runs: out-of-fold, together; repeated k-fold:
    each frame the mean of the R runs that validated it) and the first run of each group of runs
    validated on the same frames (seeds of one fold: averaged) that together cover every frame
    once. `honest`: each run's `val_outputs_honest.npz` (every row at the epoch chosen without its
    fold) where it has one."""
    outs = _run_outputs(m, honest)
    means, firsts = _groups(m, outs)
    if len(means) == 1:
        return means[0], firsts
    scored = _scored(means)
    if not any(a & b for a, b in itertools.combinations(scored, 2)):
        return _concat(means), firsts
    # each frame the mean of every run that validated it: runs, not groups, since two partitions of
    # a small pool can hold the same fold, whose runs then look like seeds of one fold
    both, stacked = _stacked(m, outs)
    return _mean(both, stacked), _cover(firsts, scored)


@dataclass(frozen=True)
class Views:
    """A member whose every validation frame was scored by n > 1 runs that did not train on it
    (repeated k-fold, seeds of k-fold, ...) while `abaw predict` averages more: n versions of its
    validation outputs, in each every frame scored by ONE of its n runs (the j-th, in run order;
    any one is an unseen model), n (`per_frame`) and predict's number of models (`predict`)."""

    outputs: tuple[FrameOutputs, ...]
    per_frame: int
    predict: int


def member_views(m: Member, honest: bool = True) -> Views | None:
    """The member's `Views` (rows in `member_outputs` order); None when each frame is validated by
    one run, or by every run (nothing to extrapolate to)."""
    outs = _run_outputs(m, honest)
    both, stacked = _stacked(m, outs)
    n = next(iter(stacked.values())).shape[1]
    if n < 2 or n == len(m.runs):
        return None
    views = tuple(FrameOutputs(both.videos, both.video_idx[::n], both.frame[::n],
                               **{t: a[:, j] for t, a in stacked.items()}) for j in range(n))
    return Views(views, n, len(m.runs))


def extrapolate(s_few: float, s_many: float, n_few: int, n_many: int, n_target: int) -> float:
    """The score of an average of `n_target` exchangeable models from the scores of averages of
    `n_few` and `n_many`, assuming score(n) = a - c / n (the variance part of an average of n
    models shrinks as 1 / n; the squared-error decomposition of an ensemble)."""
    c = (s_many - s_few) / (1 / n_few - 1 / n_many)
    return s_many + c / n_many - c / n_target


def ensemble_line(ens: dict[str, Any], honest: dict[str, Any]) -> str:
    """One line: the repeated k-fold honest estimate per number of models averaged, extrapolated."""
    n = ens["models"]
    return (f"repeated k-fold: honest {ens['views']['total']:.4f} with {n['view']} unseen model(s) per frame, "
            f"{honest['total']:.4f} with {n['honest']}; extrapolated to the {n['predict']} that predict averages: "
            f"{ens['total']:.4f} (score(n) = a - c/n)")


HONEST_KEYS = ("honest", "extrapolated")  # the info lines `honest_info` writes


def honest_info(scores: dict[str, Any]) -> dict[str, str]:
    """A blend file's honest estimate (and its repeated k-fold extrapolation) as report info lines:
    the score above is fitted on the frames it is scored on, these are not."""
    honest = scores.get("honest") or {}
    if honest.get("total") is None:
        return {}
    se = f" ± {honest['se']:.4f}" if honest.get("se") is not None else ""
    out = {HONEST_KEYS[0]: f"P_MTL {honest['total']:.4f}{se} (weights and post-processing fitted on other folds "
                           "of the scored videos)"}
    if scores.get("ensemble"):
        out[HONEST_KEYS[1]] = ensemble_line(scores["ensemble"], honest)
    return out


def _cover(firsts: list[Path], scored: list[set[str]]) -> list[Path]:
    """The groups (in run order) that cover every video once: repeated k-fold's first partition."""
    seen: set[str] = set()
    keep = []
    for r, vids in zip(firsts, scored):
        if not vids & seen:
            keep.append(r)
            seen |= vids
    return keep


def _stacked(m: Member, outs: list[FrameOutputs]) -> tuple[FrameOutputs, dict]:
    """Outputs that validate every frame the same number n of times (repeated k-fold: one group
    of runs per partition). Returns their rows sorted by (video, frame) (each frame's n copies
    adjacent, in `outs` order) and per task the copies of each frame, [frames, n, C]."""
    both = _concat(outs)  # a stable sort: each frame's copies adjacent, in `outs` order
    counts = np.unique(np.stack([both.video_idx, both.frame], 1), axis=0, return_counts=True)[1]
    r = int(counts[0])
    if (counts != r).any():
        raise AbawError(f"{m.name}: its runs' validation frames neither coincide, nor are disjoint, nor cover "
                        f"every frame equally often (repeated k-fold); counts {sorted(set(counts.tolist()))}")
    n = len(both) // r
    return both, {t: getattr(both, t).reshape(n, r, -1) for t in both.tasks}


def _mean(both: FrameOutputs, stacked: dict) -> FrameOutputs:
    """Each frame's outputs averaged over its R copies."""
    r = next(iter(stacked.values())).shape[1]
    return FrameOutputs(both.videos, both.video_idx[::r], both.frame[::r],
                        **{t: a.mean(1).astype(np.float32) for t, a in stacked.items()})


def member_validation(m: Member, val_ann: Annotations | None) -> tuple[FrameOutputs, Annotations]:
    """The member's raw validation outputs and labels (k-fold runs: out-of-fold, together)."""
    from abaw.pipeline.train.run import run_labels

    out, firsts = member_outputs(m)
    if len(firsts) == 1:
        return out, run_labels(firsts[0], val_ann)
    return out, val_ann or Annotations.concat([run_labels(r) for r in firsts])
