"""Per-frame affect for any input with a crop system (`abaw predict --video ...` with
`--system S` or `--run/--compose`, whose runs become a crop system: heads_system.RunsSystem).

For every input (abaw.pipeline.predict.inputs): decode the frames, detect the faces (MTCNN),
choose the people (`face`: `track` / `largest` / `left-right` as in `abaw extract`, or
`all`: every face, with ids from abaw.pipeline.predict.tracker), align each face to the
112 px template, encode the crops with the system batch by batch, then decode each
person's frames into outputs. The rows of all inputs form one table
(abaw.pipeline.predict.table); `predict_inputs` writes it with a timeline PNG per input and
person (abaw.pipeline.predict.timelines). An input that cannot be read is reported (one line naming
it) and skipped; the others complete (the CLI then exits with status 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abaw.errors import AbawError
from abaw.pipeline.predict.inputs import Item, discover_inputs, iter_chunks
from abaw.pipeline.predict.zeroshot import Track
from abaw.results import Result

FACE_MODES = ("track", "largest", "left-right", "all")
KINDS = ("detect", "crops")  # every input through MTCNN + alignment, or images taken as aligned crops


@dataclass(frozen=True)
class InputPredictions(Result):
    """What `predict_inputs` wrote: the table, one summary per input, the failures."""

    system: str
    out: str | None
    inputs: tuple[dict[str, Any], ...]  # {"input", "kind", "frames", "face_rows", "people", "time_scale", "plots"}
    failed: tuple[dict[str, str], ...]  # {"input", "error"}
    notes: tuple[str, ...] = ()
    synthetic: bool = False

    def format(self) -> str:
        from abaw.pipeline.predict.system import time_scale_lines

        lines = [f"system: {self.system}"]
        for r in self.inputs:
            lines.append(f"{r['input']}: {_n(r['frames'], 'frame')}, {_n(r['face_rows'], 'face row')}, "
                         + (f"{r['people']} person" if r["people"] == 1 else f"{r['people']} people")
                         + f" (faces from {r['faces_from']})")
            lines += [f"  {line}" for line in time_scale_lines(r.get("time_scale"))]
            lines += [f"  timeline: {p}" for p in r.get("plots", ())]
        if self.out:
            lines.append(f"wrote {self.out}: {_n(sum(r['rows'] for r in self.inputs), 'row')} from "
                         f"{_n(len(self.inputs), 'input')}" + (f", {len(self.failed)} failed" if self.failed else ""))
        return "\n".join(lines)

    @property
    def warnings(self) -> tuple[str, ...]:
        w = [f"error: {f['error']}" for f in self.failed] + list(self.notes)
        if self.synthetic:
            w.append(SYNTHETIC_WARNING)
        return tuple(w)


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


SYNTHETIC_WARNING = ("warning: this system was trained on synthetic data: its predictions on real faces are "
                     "not meaningful (the `synthetic` column is true)")


def _as_crops(ch: Any, size: int, where: str, warned: list[str]):
    """`--kind crops`: the whole image is the aligned face, resized to the crop size."""
    import torch
    import torch.nn.functional as F

    h, w = ch.rgb.shape[1:3]
    if (h != w or not 0.5 <= h / size <= 2) and not warned:
        warned.append(f"warning: {where}: taken as an aligned crop but it is {w}x{h}, not square near {size}x{size}; "
                      "use --kind detect for photos")
    x = torch.from_numpy(np.ascontiguousarray(ch.rgb)).permute(0, 3, 1, 2).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous(), (w, h)


def _faces_of(item: Item, system: Any, detector: Any, face: str, min_score: float,
              skipped: list[str], kind: str = "detect",
              warned: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Rows (frame, timestamp, face_id, score, box, landmarks) of one input, the system's outputs
    and its time scale (`system.time_scale`) over the frames of the person seen longest."""
    import torch

    from abaw.extract.faces import FaceSelector, warp_faces
    from abaw.pipeline.predict.tracker import IouTracker

    sel = None if face == "all" else FaceSelector(policy=face, min_score=min_score)
    trk = IouTracker() if face == "all" else None
    frame: list[int] = []
    stamp: list[float] = []
    fid: list[int] = []
    score: list[float] = []
    box: list[np.ndarray] = []
    lms: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    code_rows: list[int] = []
    nan_box, nan_lm = np.full(4, np.nan), np.full((5, 2), np.nan)
    mine: list[str] = []  # at most one crop-size warning per input
    for ch in iter_chunks(item, chunk=16, skipped=skipped):
        if kind == "crops" and item.kind != "video":
            crops, (w, h) = _as_crops(ch, system.crop_size, item.path, mine)
            for b in range(len(ch.frame)):
                code_rows.append(len(frame))
                frame.append(int(ch.frame[b])), stamp.append(float(ch.timestamp[b])), fid.append(0)
                score.append(np.nan), box.append(np.array([0, 0, w, h], float)), lms.append(nan_lm)
            codes.append(system.encode(crops))
            continue
        frames = torch.from_numpy(np.ascontiguousarray(ch.rgb))
        dets = detector(frames)
        w_idx, w_lm = [], []
        for b, d in enumerate(dets):
            if trk is not None:
                keep = np.flatnonzero(d.scores >= min_score)
                picks = sorted(zip(trk.update(d.boxes[keep], d.landmarks[keep]), keep.tolist()))
            else:
                picks = [(o, p) for o, p in enumerate(sel.select(d, int(ch.rgb.shape[2]))) if p >= 0]
            if not picks:
                frame.append(int(ch.frame[b])), stamp.append(float(ch.timestamp[b])), fid.append(-1)
                score.append(np.nan), box.append(nan_box), lms.append(nan_lm)
            for o, p in picks:
                code_rows.append(len(frame))
                frame.append(int(ch.frame[b])), stamp.append(float(ch.timestamp[b])), fid.append(int(o))
                score.append(float(d.scores[p])), box.append(d.boxes[p]), lms.append(d.landmarks[p])
                w_idx.append(b), w_lm.append(d.landmarks[p])
        if w_idx:
            crops = warp_faces(frames, np.asarray(w_idx), np.stack(w_lm).astype(np.float32), system.crop_size)
            codes.append(system.encode(crops))
    if warned is not None:
        warned.extend(mine)
    if not frame:
        raise AbawError(f"{item.path}: no frame could be read")
    rows = {"frame": np.asarray(frame, np.int64), "timestamp": np.asarray(stamp, np.float64),
            "face_id": np.asarray(fid, np.int64), "score": np.asarray(score, np.float64),
            "box": np.stack(box).astype(np.float64), "landmarks": np.stack(lms).astype(np.float64)}
    outputs: dict[str, np.ndarray] = {}
    scale: dict[str, Any] = {}
    if code_rows:
        enc = np.concatenate(codes)
        at = np.asarray(code_rows, np.int64)
        ids = rows["face_id"][at]
        longest = 1  # a single frame has no time scale
        for person in np.unique(ids):
            sub = at[ids == person]  # rows in frame order
            track = Track(rows["frame"][sub], rows["timestamp"][sub], enc[ids == person])
            out = system.decode(track)
            for t, a in out.items():
                if t not in outputs:
                    outputs[t] = np.full((len(frame),) + a.shape[1:], np.nan)
                outputs[t][sub] = a
            if len(sub) > longest:
                longest, scale = len(sub), system.time_scale(track)
    return rows, outputs, scale


def predict_frames(system: Any, inputs: list[str] | tuple[str, ...], face: str = "track", device: str = "cpu",
                   detect_size: int = 640, min_score: float = 0.9, progress: bool = False, kind: str = "detect",
                   warned: list[str] | None = None):
    """(table, per-input summaries, failures) for the inputs; nothing is written.

    `kind`: `detect` (every input through MTCNN + alignment) or `crops` (images and frame
    folders are aligned face crops already: resized to the crop size, no detection; a
    warning goes into `warned` when one is not square or far from that size)."""
    import pandas as pd

    from abaw.extract.faces import FaceDetector
    from abaw.pipeline.predict.table import empty_frame, results_frame

    if face not in FACE_MODES:
        raise AbawError(f"unknown --face {face!r}; expected one of {', '.join(FACE_MODES)}")
    if kind not in KINDS:
        raise AbawError(f"unknown --kind {kind!r}; expected one of {', '.join(KINDS)}")
    items, problems = discover_inputs(list(inputs))
    failed = [{"input": p.split(": ", 1)[0], "error": p} for p in problems]
    if not items:
        raise AbawError(problems[0] if problems else "no inputs given")
    detector = FaceDetector(device, detect_size=detect_size)
    tables, summaries = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="input", desc="predict", leave=False)
    for it in items:
        skipped: list[str] = []
        try:
            rows, outputs, scale = _faces_of(it, system, detector, face, min_score, skipped, kind, warned)
        except AbawError as e:
            failed.append({"input": it.path, "error": str(e)})
            continue
        finally:
            if bar is not None:
                bar.update(1)
        failed.extend({"input": s.split(": ", 1)[0], "error": s} for s in skipped)
        tables.append(results_frame(it.path, rows["frame"], rows["timestamp"], rows["face_id"], rows["score"],
                                    rows["box"], rows["landmarks"], outputs, system.au_thresholds,
                                    system.synthetic))
        has = rows["face_id"] >= 0
        summaries.append({"input": it.path, "kind": it.kind,
                          "faces_from": "crops" if kind == "crops" and it.kind != "video" else "detection",
                          "frames": int(len(np.unique(rows["frame"]))),
                          "rows": int(len(rows["frame"])), "face_rows": int(has.sum()),
                          "people": int(len(np.unique(rows["face_id"][has]))), "time_scale": scale})
    if bar is not None:
        bar.close()
    df = pd.concat(tables, ignore_index=True) if tables else empty_frame()
    return df, summaries, failed


def predict_inputs(system: Any, inputs: list[str] | tuple[str, ...], out: str | os.PathLike, face: str = "track",
                   fmt: str = "csv", device: str = "cpu", detect_size: int = 640,
                   progress: bool = False, kind: str = "detect", plots: bool = True) -> InputPredictions:
    """Write `OUT/predictions.csv` (or `.parquet`), `OUT/predictions.json` and (`plots`) a
    timeline PNG per input and person (abaw.pipeline.predict.timelines) for the inputs."""
    from abaw.io import write_json
    from abaw.pipeline.predict.table import FORMATS, write_results
    from abaw.pipeline.predict.timelines import write_timelines

    if fmt not in FORMATS:
        raise AbawError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        from abaw.pipeline.predict.table import _parquet

        _parquet()  # before any work
    warned: list[str] = []
    df, summaries, failed = predict_frames(system, inputs, face, device, detect_size, progress=progress, kind=kind,
                                           warned=warned)
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    path = write_results(df, outdir / f"predictions.{fmt}", fmt)
    if plots:
        pngs = write_timelines(df, outdir, [r["input"] for r in summaries])
        summaries = [{**r, "plots": pngs[r["input"]]} for r in summaries]
    res = InputPredictions(system=system.describe(), out=str(path), inputs=tuple(summaries), failed=tuple(failed),
                           notes=tuple(warned) + tuple(system.notes), synthetic=bool(system.synthetic))
    write_json(outdir / "predictions.json", {**res.to_dict(), "face": face, "system_info": system.info})
    return res


def predict_video(path: str | os.PathLike | list, system: Any = "fer", face: str = "track", device: str = "cpu",
                  detect_size: int = 640, progress: bool = False):
    """Per-frame affect of a video, image or folder (or a list of them) as a pandas DataFrame.

    `system`: `"fer"` (built in, zero-shot EXPR), an exported system's folder or URL, or a
    system object. Columns: abaw.pipeline.predict.table. Inputs that cannot be read raise
    AbawError (the CLI instead skips them and exits with status 2).
    """
    if isinstance(system, str):
        from abaw.pipeline.predict.hub import open_system

        system = open_system(system, device)
    paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
    df, _, failed = predict_frames(system, paths, face, device, detect_size, progress=progress)
    if failed:
        raise AbawError(failed[0]["error"])
    if system.synthetic:
        import warnings

        warnings.warn(SYNTHETIC_WARNING, stacklevel=2)
    return df
