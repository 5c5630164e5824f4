"""Filling frames that have no prediction (no face found) from their temporal neighbours."""

from __future__ import annotations

import numpy as np


def nearest_available(video: np.ndarray, frame: np.ndarray, available: np.ndarray) -> np.ndarray:
    """For every row, the index of the nearest row of the same video that is `available`.

    Rows need not be sorted. Distance is measured in frame numbers; ties go to the earlier
    frame. Rows of a video with nothing available get -1. Available rows map to themselves.
    """
    video = np.asarray(video)
    frame = np.asarray(frame, dtype=np.int64)
    available = np.asarray(available, dtype=bool)
    n = len(frame)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    # group rows by video, then sort by frame inside each group
    _, vcode = np.unique(video, return_inverse=True)
    order = np.lexsort((frame, vcode))
    v_sorted, f_sorted, a_sorted = vcode[order], frame[order], available[order]
    bounds = np.flatnonzero(np.diff(v_sorted)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n]):
        av = np.flatnonzero(a_sorted[lo:hi])
        if len(av) == 0:
            continue
        fr = f_sorted[lo:hi]
        af = fr[av]
        pos = np.searchsorted(af, fr)  # first available frame >= fr
        right = np.clip(pos, 0, len(av) - 1)
        left = np.clip(pos - 1, 0, len(av) - 1)
        d_right = np.abs(af[right] - fr)
        d_left = np.abs(fr - af[left])
        pick = np.where(d_left <= d_right, left, right)
        out[order[lo:hi]] = order[lo + av[pick]]
    return out


def fill_rows(values: dict[str, np.ndarray], video: np.ndarray, frame: np.ndarray, available: np.ndarray,
              fallback: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
    """Copy each unavailable row's values from its nearest available neighbour in the video.

    Rows of videos with no available row at all take `fallback[name]` (e.g. the training
    prior). Returns (filled arrays, rows filled from neighbours, rows filled from fallback).
    """
    src = nearest_available(video, frame, available)
    missing = ~np.asarray(available, bool)
    from_neighbour = missing & (src >= 0)
    from_fallback = missing & (src < 0)
    out = {}
    for name, arr in values.items():
        a = np.array(arr, copy=True)
        a[from_neighbour] = arr[src[from_neighbour]]
        if from_fallback.any():
            a[from_fallback] = fallback[name]
        out[name] = a
    return out, int(from_neighbour.sum()), int(from_fallback.sum())
