"""Planning an extraction: which cache videos each source gives, what is already done,
what conflicts (settings, fingerprints), and the split of jobs between ranks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abaw.cache.store import FeatureStore
from abaw.errors import AbawError
from abaw.extract.backbones import Backbone
from abaw.extract.config import ExtractConfig
from abaw.extract.faces import FACTOR
from abaw.extract.frames import FrameFolder
from abaw.extract.sources import Source
from abaw.fingerprint import same_features


@dataclass
class Output:
    """One cache video produced by a source."""

    video: str
    side: int  # selector output index (0, or 0/1 for left/right)
    wanted: set[int] | None  # frame numbers to keep (None: all)
    selection: str = "all"  # "all" or a hash of the wanted frame numbers (compared on resume)
    wanted_arr: np.ndarray | None = None
    new_index: bool = True  # write the index (False: reuse the stored one)
    overwrite_index: bool = False
    keys: list[tuple[Backbone, bool]] = field(default_factory=list)  # (backbone, overwrite its array)
    stored: Any = None  # VideoIndex when reusing
    stored_landmarks: np.ndarray | None = None
    stored_partial: dict[str, Any] | None = None  # the cached video was kept partial (--allow-partial)


@dataclass
class Job:
    """One source and the cache videos it produces."""

    source: Source
    policy: str  # for videos
    outputs: list[Output]
    settings: dict[str, Any]
    folder: FrameFolder | None = None

    @property
    def detect(self) -> bool:
        return any(o.new_index for o in self.outputs)


def _outputs_for(src: Source, cfg: ExtractConfig,
                 only: dict[str, set[int]] | None) -> tuple[str, list[tuple[str, int]]]:
    """(policy, [(video id, selector output)]) for a source, honouring `only`."""
    stem = src.name
    pair = [(f"{stem}_left", 0), (f"{stem}_right", 1)]
    if src.kind == "frames":
        policy, outs = "frames", [(stem, 0)]
    elif cfg.face == "auto":
        if only is not None and (f"{stem}_left" in only or f"{stem}_right" in only):
            policy, outs = "left-right", pair
        else:
            policy, outs = "track", [(stem, 0)]
    elif cfg.face == "left-right":
        policy, outs = "left-right", pair
    else:
        policy, outs = cfg.face, [(stem, 0)]
    if only is not None:
        outs = [o for o in outs if o[0] in only]
    return policy, outs


def _mismatch(attrs: dict[str, Any], job: Job, out: Output) -> str | None:
    """Why a stored video cannot be resumed by this run (None if it can)."""
    old = attrs.get("settings", {})
    if old != job.settings:
        diff = sorted(k for k in set(old) | set(job.settings) if old.get(k) != job.settings.get(k))
        return f"extracted with other settings ({', '.join(diff)})"
    src = attrs.get("source", {})
    if job.source.kind == "video" and src.get("size") not in (None, job.source.size):
        return f"the source file changed size ({src.get('size')} -> {job.source.size} bytes)"
    return None


def _selection(wanted: set[int] | None) -> str:
    if wanted is None:
        return "all"
    arr = np.asarray(sorted(wanted), dtype="<i8")
    return f"{len(arr)} frames, sha256 {hashlib.sha256(arr.tobytes()).hexdigest()[:16]}"


class Refusal(Exception):
    """A stored video conflicts with this run (other settings or weights) and may not be replaced."""


def plan_job(job: Job, fs: FeatureStore, bbs: list[Backbone], fps: dict[str, dict], overwrite: bool) -> None:
    """Decide per output: skip, resume (some backbones) or extract; raise Refusal on conflicts."""
    keep = []
    for out in job.outputs:
        if not fs.has_video(out.video):
            out.keys = [(b, False) for b in bbs]
            keep.append(out)
            continue
        attrs = fs.video_attrs(out.video)
        out.stored_partial = attrs.get("partial")
        why = _mismatch(attrs, job, out)
        if why is None and attrs.get("selection", "all") != out.selection:
            why = "cached with a different frame selection (--only)"
        if why is not None:
            if not overwrite:
                raise Refusal(f"{out.video}: {why}")
            out.overwrite_index = True
            out.keys = [(b, False) for b in bbs]
            keep.append(out)
            continue
        idx = fs.read_index(out.video)
        todo = []
        for b in bbs:
            if fs.has_features(out.video, b.key):
                old = fs.fingerprint(out.video, b.key)
                if same_features(old, fps[b.key]):
                    continue
                if not overwrite:
                    raise Refusal(f"{out.video}: features {b.key!r} were made by different weights or "
                                   f"preprocessing ({_fp_diff(old, fps[b.key])})")
                todo.append((b, True))
            else:
                todo.append((b, False))
        if todo:
            out.new_index = False
            out.keys = todo
            out.stored = idx
            if job.source.kind == "video":
                lm = fs.read_array(out.video, "landmarks")
                if lm is None:
                    raise Refusal(f"{out.video}: stored index has no landmarks to resume from")
                out.stored_landmarks = lm.astype(np.float32)
            keep.append(out)
        else:
            out.keys = []
            keep.append(out)  # complete: reported as skipped
    job.outputs = keep


def _fp_diff(a: dict, b: dict) -> str:
    keys = [k for k in ("spec", "dim", "preprocess", "weights_sha256") if a.get(k) != b.get(k)]
    return "differs in " + ", ".join(keys) if keys else "differs"


def make_jobs(sources: list[Source], cfg: ExtractConfig, only: dict[str, set[int]] | None, crop: int) -> list[Job]:
    """A job per source that has cache videos in scope, with the settings compared on resume."""
    detector_settings = {"detector": f"mtcnn ({cfg.detector})", "detect_size": cfg.detect_size,
                         "min_face": cfg.min_face, "thresholds": list(cfg.thresholds), "factor": FACTOR}
    jobs: list[Job] = []
    for src in sources:
        policy, outs = _outputs_for(src, cfg, only)
        if not outs:
            continue
        if src.kind == "video":
            settings = {"kind": "video", "face": policy, "crop_size": crop, **detector_settings,
                        "min_score": cfg.min_score, "track_iou": cfg.track_iou, "track_reset": cfg.track_reset}
        else:
            settings = {"kind": "frames", "crop_size": crop}
        outputs = []
        for vid, side in outs:
            wanted = None if (only is None or cfg.all_frames) else only.get(vid, set())
            outputs.append(Output(video=vid, side=side, wanted=wanted, selection=_selection(wanted)))
        jobs.append(Job(source=src, policy=policy, outputs=outputs, settings=settings))
    if only is not None and not jobs:
        raise AbawError(f"none of the {len(sources)} input videos is listed in {', '.join(cfg.only)}")
    return jobs


def plan_jobs(jobs: list[Job], fs: FeatureStore, bbs: list[Backbone], fps: dict[str, dict], overwrite: bool) -> None:
    """`plan_job` for every job; any conflicts are one AbawError (nothing is written)."""
    refusals = []
    for job in jobs:
        try:
            plan_job(job, fs, bbs, fps, overwrite)
        except Refusal as e:
            refusals.append(str(e))
    if refusals:
        raise AbawError(f"{fs.path}: {len(refusals)} cached videos conflict with this run, e.g. {refusals[0]}; "
                        "rerun with --overwrite to replace them")


def shard(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """Longest-processing-time split of jobs over ranks (deterministic on every rank)."""
    if world <= 1:
        return jobs
    load = [0] * world
    mine: list[int] = []
    order = sorted(range(len(jobs)), key=lambda i: (-jobs[i].source.size, jobs[i].source.name))
    for i in order:
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += max(1, jobs[i].source.size)
        if r == rank:
            mine.append(i)
    return [jobs[i] for i in sorted(mine)]
