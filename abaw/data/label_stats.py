"""Statistics of an annotation file that decide how realistic it is (gaps, lengths, runs, rates).

`label_stats(path_or_annotations)` computes what ABAW.md reports for the real s-Aff-Wild2
validation list (`abaw.data.synth_profiles.REAL_STATS`), so synthetic data can be checked
against it; `format_stats` prints them next to the real numbers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from abaw.data.annotations import Annotations, read_annotations
from abaw.data.labels import N_EXPR


def _summary(x: np.ndarray, keys: tuple[str, ...]) -> dict[str, float]:
    if not len(x):
        return {k: 0.0 for k in keys}
    f = {"min": np.min, "median": np.median, "mean": np.mean, "max": np.max,
         "p90": lambda a: np.percentile(a, 90), "share_1": lambda a: np.mean(a == 1)}
    return {k: round(float(f[k](x)), 4) for k in keys}


def gap_stats(video_idx: np.ndarray, frame: np.ndarray) -> dict[str, Any]:
    """Gaps between consecutive frame numbers of a video and frames per video.

    Rows must be grouped by video and sorted by frame within each video (as in
    `Annotations` and feature tables). Returns {"frames", "videos", "gap": median, mean,
    p90, max, share_1, "frames_per_video": min, median, max}.
    """
    video_idx = np.asarray(video_idx)
    frame = np.asarray(frame, dtype=np.int64)
    same = np.diff(video_idx) == 0 if len(frame) else np.zeros(0, bool)
    gaps = np.diff(frame)[same]
    _, lengths = np.unique(video_idx, return_counts=True)
    return {"frames": int(len(frame)), "videos": int(len(lengths)),
            "gap": _summary(gaps, ("median", "mean", "p90", "max", "share_1")),
            "frames_per_video": _summary(lengths, ("min", "median", "max"))}


def label_stats(ann: Annotations | str | os.PathLike) -> dict[str, Any]:
    """Gap, frames-per-video, expression-run, validity, AU-rate and EXPR-count statistics.

    Gaps are between consecutive labelled frame numbers of a video; expression runs are
    maximal runs of consecutive labelled frames of a video with one valid class.
    """
    a = ann if isinstance(ann, Annotations) else read_annotations(ann)
    gaps, lengths, runs = [], [], []
    for v in a.videos:
        sl = a.video_slice(v)
        fr, ex = a.frame[sl], a.expr[sl]
        lengths.append(len(fr))
        gaps.append(np.diff(fr))
        if len(ex):
            cut = np.flatnonzero(np.diff(ex)) + 1
            starts = np.concatenate([[0], cut])
            ends = np.concatenate([cut, [len(ex)]])
            keep = ex[starts] >= 0
            runs.append((ends - starts)[keep])
    g = np.concatenate(gaps) if gaps else np.zeros(0, int)
    r = np.concatenate(runs) if runs else np.zeros(0, int)
    n = max(1, len(a))
    counts = np.bincount(a.expr[a.expr_valid], minlength=N_EXPR)
    au = a.au[a.au_valid]
    return {
        "rows": len(a),
        "videos": len(a.videos),
        "gap": _summary(g, ("median", "mean", "p90", "max", "share_1")),
        "frames_per_video": _summary(np.array(lengths), ("min", "median", "max")),
        "expr_runs": _summary(r, ("median", "mean")),
        "valid": {t: round(float(a.valid(t).sum()) / n, 4) for t in ("va", "expr", "au")},
        "au_rates": [round(float(x), 4) for x in (au.mean(0) if len(au) else np.zeros(a.au.shape[1]))],
        "expr_counts": [int(c) for c in counts],
        "expr_share": [round(float(c) / max(1, counts.sum()), 4) for c in counts],
    }


def format_stats(s: dict[str, Any], real: dict[str, Any] | None = None) -> str:
    """A few lines for the console; with `real`, the real values in brackets."""

    def num(key: str, v: float) -> str:
        return f"{v:.1%}" if key == "share_1" else f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"

    def pair(group: str, key: str) -> str:
        txt = num(key, s[group][key])
        if real is not None:
            txt += f" ({num(key, real[group][key])})"
        return f"{key} {txt}"

    lines = [
        "gap between labelled frames: " + ", ".join(pair("gap", k) for k in ("median", "mean", "p90", "max", "share_1")),
        f"labelled frames per video ({s['videos']} videos): "
        + ", ".join(pair("frames_per_video", k) for k in ("min", "median", "max")),
        "expression runs (labelled frames): " + ", ".join(pair("expr_runs", k) for k in ("median", "mean")),
        "valid rows: " + ", ".join(f"{t.upper()} {s['valid'][t]:.0%}" for t in ("va", "expr", "au")),
        "AU rates: " + " ".join(f"{x:.3f}" for x in s["au_rates"]),
        "EXPR counts 0..7: " + " ".join(str(c) for c in s["expr_counts"]),
    ]
    if real is not None:
        lines[4] += "  (" + " ".join(f"{x:.3f}" for x in real["au_rates"]) + ")"
        lines[5] += "  (shares " + " ".join(f"{x:.2f}" for x in s["expr_share"]) + "; real " + \
            " ".join(f"{x:.2f}" for x in real["expr_share"]) + ")"
    return "\n".join(lines)
