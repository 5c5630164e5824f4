"""One time scale in training and prediction: frame-gap statistics and strided prediction.

A temporal module learns the spacing of its window positions. With the default
`--context labelled` the positions are the *labelled* frames; on real s-Aff-Wild2 they are
sparse (median gap 4 frames, ABAW.md), so 32 positions span ~130-270 video frames. A
cache with every frame (`extract` over full `cropped_aligned/`, `--all-frames`, or
`predict --video`) would feed the same module 32 consecutive frames: a several times
shorter time scale than it was trained on.

Each run records in `data.json` the gap statistics of its labelled training and
validation frames (`gaps`, via `abaw.data.label_stats.gap_stats`) and under
`time_scale` the median gap between neighbouring window positions in training
(`window_gap`: ~4 for labelled context on sparse labels, 1 for `--context dense`).

At prediction (`Run.predict`), `plan_time_scale` compares it with the median gap of the
frames to predict. When these are at least 1.5x denser, the frames are predicted in
`step = round(train gap / frames gap)` phase-shifted passes over every `step`-th frame
(`dataset.strided_windows`): pass p holds frames p, p+step, ... of each segment.
Chosen over "predict a subsample and interpolate" because it costs the same as one dense
pass, every frame is predicted exactly once from its own features (nothing is
interpolated), and windows keep the training spacing; the passes differ slightly, which
the fitted temporal smoothing evens out. Frames sparser than in training (a dense-context
run on a labelled-only cache) cannot be fixed and are predicted as they are (reported).
Runs without the statistics (written before them) predict as before (`unknown`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from abaw.data.label_stats import gap_stats
from abaw.pipeline.train.dataset import FrameSet

MODES = ("auto", "off")
DENSER = 1.5  # subsample when the frames are at least this many times denser than in training


@dataclass(frozen=True)
class TimeScale:
    """How a run's temporal windows are laid over the frames it predicts."""

    train_gap: float | None  # median gap between window positions in training (None: not recorded)
    frames_gap: float  # median gap between neighbouring frames to predict (within segments)
    step: int  # 1: windows over consecutive frames; k: k passes over every k-th frame
    mode: str  # as-trained | subsampled | sparser | unknown | off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.mode == "subsampled":
            return (f"time scale: trained on frames {self.train_gap:g} apart, predicting frames "
                    f"{self.frames_gap:g} apart in {self.step} passes over every {self.step}th frame")
        if self.mode == "sparser":
            return (f"time scale: the frames are sparser than in training ({self.frames_gap:g} vs "
                    f"{self.train_gap:g} frames apart); predicted as they are")
        return f"time scale: {self.mode}"


def window_gap(fs: FrameSet) -> float:
    """Median frame-number gap between neighbouring positions inside segments (1 if none)."""
    fr = fs.frame.astype(np.int64)
    inside = np.ones(max(len(fr) - 1, 0), bool)
    inside[fs.segments[1:, 0] - 1] = False  # no gap across a segment start
    gaps = np.diff(fr)[inside] if len(fr) > 1 else np.zeros(0, np.int64)
    return float(np.median(gaps)) if len(gaps) else 1.0


def gap_record(labelled: FrameSet, context: FrameSet) -> dict[str, Any]:
    """What `data.json` records per split: labelled-frame gaps and the context's frame count."""
    return {"gaps": gap_stats(labelled.video_idx, labelled.frame), "context_frames": len(context)}


def training_time_scale(context: str, fs: FrameSet) -> dict[str, Any]:
    """`data.json`'s `time_scale`: the context and the window gap the temporal module learns."""
    return {"context": context, "window_gap": window_gap(fs), "frames": len(fs)}


def train_gap_of(data: dict[str, Any]) -> float | None:
    """The training window gap recorded in a run's `data.json` (None for older runs)."""
    gap = (data.get("time_scale") or {}).get("window_gap")
    return None if gap is None else float(gap)


def plan_time_scale(train_gap: float | None, fs: FrameSet, mode: str = "auto") -> TimeScale:
    """The step for predicting `fs` with a run trained at `train_gap` (module docstring)."""
    gap = window_gap(fs)
    if mode == "off":
        return TimeScale(train_gap, gap, 1, "off")
    if mode != "auto":
        raise ValueError(f"time scale mode {mode!r}: expected one of {MODES}")
    if train_gap is None:
        return TimeScale(None, gap, 1, "unknown")
    ratio = train_gap / gap
    if ratio >= DENSER:
        return TimeScale(train_gap, gap, int(np.floor(ratio + 0.5)), "subsampled")
    return TimeScale(train_gap, gap, 1, "sparser" if ratio <= 1 / DENSER else "as-trained")
