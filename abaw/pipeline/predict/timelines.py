"""Timeline PNGs of a results table (abaw.pipeline.predict.table): one per input and person.

For every input with at least two frames (videos and frame folders; a photo has no
timeline) and every `face_id` in it: `abaw.plots.timeline` over all the input's frames,
the person's valence/arousal lines, expression strip and AU heat map (each panel only
when the system predicts that task), frames where the person has no face shaded. The
x axis is the timestamp in seconds, or the frame number when the input has none
(frame folders). Files: `OUT/<input stem>_face<id>.png` (`_2`, `_3`, ... appended to the
stem when two inputs share one), each written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from abaw.pipeline.predict.table import AU_COLUMNS, EXPR_COLUMNS


def _stems(inputs: list[str]) -> dict[str, str]:
    """A distinct file stem per input name."""
    used: set[str] = set()
    out = {}
    for name in inputs:
        stem = base = Path(name.rstrip("/\\")).stem or "input"
        k = 1
        while stem in used:
            k += 1
            stem = f"{base}_{k}"
        used.add(stem)
        out[name] = stem
    return out


def write_timelines(df, out_dir: str | os.PathLike, inputs: list[str] | None = None) -> dict[str, list[str]]:
    """Write the timelines of `df` (the inputs in `inputs` order, default the table's) into
    `out_dir`; return input -> the PNG paths written for it (none for single-frame inputs)."""
    from abaw import plots

    names = list(dict.fromkeys(inputs if inputs is not None else df["input"].tolist()))
    tasks = {"va": ["valence", "arousal"], "expr": list(EXPR_COLUMNS), "au": [f"{c}_prob" for c in AU_COLUMNS]}
    present = {t: bool(df[cols].notna().to_numpy().any()) for t, cols in tasks.items()}
    if not any(present.values()):
        return {n: [] for n in names}
    stems = _stems(names)
    written: dict[str, list[str]] = {}
    for name in names:
        sub = df[df["input"] == name]
        frames, first = np.unique(sub["frame"].to_numpy(np.int64), return_index=True)
        written[name] = []
        if len(frames) < 2:
            continue
        stamp = sub["timestamp"].to_numpy(np.float64)[first]
        seconds = bool(np.isfinite(stamp).all())
        t = stamp if seconds else frames.astype(np.float64)
        people = sub["face_id"].dropna().astype(np.int64).unique()
        for person in sorted(people.tolist()):
            mine = sub[sub["face_id"] == person]
            at = np.searchsorted(frames, mine["frame"].to_numpy(np.int64))
            face = np.zeros(len(frames), bool)
            face[at] = True
            arrays = {}
            for task, cols in tasks.items():
                if present[task]:
                    a = np.full((len(frames), len(cols)), np.nan)
                    a[at] = mine[cols].to_numpy(np.float64, na_value=np.nan)
                    arrays[task] = a
                else:
                    arrays[task] = None
            path = Path(out_dir) / f"{stems[name]}_face{person}.png"
            plots.timeline(path, t, arrays["va"], arrays["expr"], arrays["au"], face,
                           title=f"{name}: face {person}, {int(face.sum())}/{len(frames)} frames",
                           xlabel="time (s)" if seconds else "frame")
            written[name].append(str(path))
    return written
