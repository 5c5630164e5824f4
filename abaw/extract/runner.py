"""`abaw extract`: frozen backbones over videos or aligned frame folders -> the Zarr cache.

    extract(inputs, store, backbones, ExtractConfig(...)) -> ExtractSummary

Inputs are video files, folders of videos, or Aff-Wild2-style `cropped_aligned/`
folders (one sub-folder of frame images per video). Videos are decoded exactly (PyAV),
faces detected (MTCNN), one person chosen per video (or two for `_left`/`_right`) and
aligned to the five-point template; frame folders are read as they are. Every
backbone sees the same crops in one pass. Each cache video is written once, when all
its frames are through every backbone: index first, then one array per backbone
(the done-marker of that backbone). A rerun skips what is complete, resumes what is
not (reusing the stored landmarks, so crops are identical), and refuses videos whose
stored settings or backbone fingerprints differ unless `overwrite`.

Forward batches always have exactly `batch_size` rows (the last one is zero-padded), so
on CPU a frame's features do not depend on which other frames shared its batch: an
interrupted run, resumed, gives the same bytes as an uninterrupted one.

Sharding: with RANK / WORLD_SIZE set (torchrun), sources are split between ranks by
size (longest first); each rank writes only its own videos into the shared store. With
MASTER_ADDR set too, ranks meet (gloo) to clear stale staging once and merge summaries.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from abaw.cache.store import FeatureStore
from abaw.errors import AbawError
from abaw.extract.backbones import Backbone, create_backbone, same_features
from abaw.extract.faces import POLICIES, FaceDetector, FaceSelector, warp_faces
from abaw.extract.frames import FrameFolder, FrameDataset, frame_loader, is_frame_folder, list_frames
from abaw.extract.preview import PreviewCollector, contact_sheet
from abaw.extract.video import VideoError, is_video, iter_frames, probe

FACE_CHOICES = ("auto",) + POLICIES
STALLS = ("decoded frames", "images")  # timers of the main thread waiting for data
BACKGROUND_WRITES: bool | None = None  # None: in a background thread on GPU, inline on CPU


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings (recorded in the cache; those that shape the crops are compared
    on resume)."""

    face: str = "auto"  # auto | track | largest | left-right (auto: left-right where --only lists X_left/X_right)
    crop_size: int = 112  # aligned crop side; 0 = the largest backbone input size
    detector: str = "batched"  # MTCNN cascade: batched (ours, fast) | facenet (facenet-pytorch's detect_face)
    detect_size: int = 640  # longest side of the frame copy MTCNN runs on (0 = full size)
    min_face: int = 20  # MTCNN minimum face size, in detection pixels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN stage thresholds
    min_score: float = 0.9  # detections scoring lower are ignored when choosing the person
    track_iou: float = 0.3
    track_reset: int = 30  # frames after which a lost track re-acquires the largest face
    batch_size: int = 64  # backbone batch (fixed; the last one is padded)
    detect_batch: int = 16  # frames per decode/detect chunk
    workers: int = -1  # image reader processes for frame folders (-1: 0 on CPU, up to 8 on GPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp32 on CPU, bf16/fp16 on CUDA) | fp32 | bf16 | fp16
    only: tuple[str, ...] = ()  # annotation files / test lists restricting videos and frames
    all_frames: bool = False  # with `only`: keep every frame of the listed videos
    overwrite: bool = False
    preview: str | None = None  # folder for one contact-sheet PNG per video
    kind: str = "auto"  # auto | videos | frames

    def validate(self) -> None:
        if self.face not in FACE_CHOICES:
            raise AbawError(f"--face {self.face!r}: expected one of {', '.join(FACE_CHOICES)}")
        if self.kind not in ("auto", "videos", "frames"):
            raise AbawError(f"--kind {self.kind!r}: expected auto, videos or frames")
        if self.detector not in ("batched", "facenet"):
            raise AbawError(f"--detector {self.detector!r}: expected batched or facenet")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise AbawError(f"--precision {self.precision!r}: expected auto, fp32, bf16 or fp16")
        if self.batch_size < 1 or self.detect_batch < 1:
            raise AbawError("batch sizes must be >= 1")
        if self.crop_size < 0 or (0 < self.crop_size < 16):
            raise AbawError(f"--crop-size {self.crop_size}: expected 0 (auto) or >= 16")


# ---------------------------------------------------------------------------- summary


@dataclass
class ExtractSummary:
    """What a run did (merged over ranks when sharded)."""

    store: str
    world: int = 1
    videos: int = 0  # cache videos in scope
    done: list[str] = field(default_factory=list)  # written (or completed) by this run
    skipped: list[str] = field(default_factory=list)  # already complete
    failed: list[dict[str, str]] = field(default_factory=list)  # {"source", "error"}
    frames: int = 0  # frames (index rows) processed
    faces: int = 0  # of which with a face
    unreadable: int = 0  # frame images that could not be decoded (recorded as no face)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # busy seconds per stage
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def shares(self) -> dict[str, float]:
        """Share of busy time per stage (decode runs in its own thread; stalls excluded)."""
        busy = {k: v for k, v in self.timings.items() if k not in STALLS and v > 0}
        tot = sum(busy.values())
        return {k: v / tot for k, v in busy.items()} if tot else {}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fps"] = self.fps
        return d

    @staticmethod
    def merge(parts: list[dict[str, Any]]) -> ExtractSummary:
        s = ExtractSummary(store=parts[0]["store"], world=len(parts), device=parts[0]["device"],
                           precision=parts[0]["precision"])
        for p in parts:
            s.videos += p["videos"]
            s.done += p["done"]
            s.skipped += p["skipped"]
            s.failed += p["failed"]
            s.frames += p["frames"]
            s.faces += p["faces"]
            s.unreadable += p["unreadable"]
            s.wall_s = max(s.wall_s, p["wall_s"])
            for k, v in p["timings"].items():
                s.timings[k] = s.timings.get(k, 0.0) + v
        s.done.sort()
        s.skipped.sort()
        return s

    def format(self) -> str:
        nf = self.frames - self.faces
        share = f"{100 * self.faces / self.frames:.1f}%" if self.frames else "n/a"
        lines = [f"{self.store}: {len(self.done)} videos extracted ({self.frames:,} frames, {share} with a face, "
                 f"{nf:,} without), {len(self.skipped)} already done, {len(self.failed)} failed"
                 + (f", {self.unreadable} unreadable images" if self.unreadable else "")]
        busy = {k: v for k, v in self.shares().items()}
        t = " · ".join(f"{k} {100 * v:.0f}%" for k, v in busy.items())
        stall = {k: v for k, v in self.timings.items() if k in STALLS and v > 0.05}
        lines.append(f"{self.fps:,.1f} frames/s over {self.wall_s:.1f} s on {self.device} ({self.precision})"
                     + (f" [{self.world} ranks]" if self.world > 1 else "")
                     + (f"; busy time: {t}" if t else "")
                     + "".join(f"; waited {v:.1f} s for {k}" for k, v in stall.items()))
        for f in self.failed:
            lines.append(f"FAILED {f['source']}: {f['error']}")
        return "\n".join(lines)


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, dt: float) -> None:
        with self.lock:
            self.t[name] = self.t.get(name, 0.0) + dt


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    kind: str  # "video" | "frames"
    path: str
    name: str  # video id (frames) or clip stem (video)
    size: int  # bytes (video file) or number of files (frames), for sharding

    def describe(self) -> dict[str, Any]:
        st = os.stat(self.path)
        d: dict[str, Any] = {"path": os.path.abspath(self.path), "kind": self.kind, "mtime": st.st_mtime}
        d["size" if self.kind == "video" else "n_files"] = self.size
        return d


def discover(inputs: Iterable[str | os.PathLike], kind: str = "auto") -> list[Source]:
    """Video files, folders of videos, `cropped_aligned/`-style folders, or one frame folder."""
    out: list[Source] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_file():
            if not is_video(p):
                raise AbawError(f"{p}: not a video file (by its extension)")
            if kind == "frames":
                raise AbawError(f"{p}: a video file, but --kind frames was given")
            out.append(Source("video", str(p), p.stem, p.stat().st_size))
        elif p.is_dir():
            entries = sorted(p.iterdir())
            vids = [e for e in entries if e.is_file() and is_video(e)]
            subs = [e for e in entries if e.is_dir() and not e.name.startswith(".") and is_frame_folder(e)]
            use = kind
            if kind == "auto":
                if vids and subs:
                    raise AbawError(f"{p}: holds both video files and frame folders; choose with --kind")
                use = "videos" if vids else "frames"
            if use == "videos":
                if not vids:
                    raise AbawError(f"{p}: no video files found")
                out.extend(Source("video", str(v), v.stem, v.stat().st_size) for v in vids)
            elif subs:
                out.extend(Source("frames", str(s), s.name, sum(1 for _ in os.scandir(s))) for s in subs)
            elif is_frame_folder(p):
                out.append(Source("frames", str(p), p.name, sum(1 for _ in os.scandir(p))))
            else:
                raise AbawError(f"{p}: no videos or frame folders found")
        else:
            raise AbawError(f"{p}: no such file or directory")
    seen: dict[str, str] = {}
    for s in out:
        if s.name in seen:
            raise AbawError(f"two inputs give the video id {s.name!r}: {seen[s.name]} and {s.path}")
        seen[s.name] = s.path
    return out


def read_only_lists(paths: Sequence[str | os.PathLike]) -> dict[str, set[int]]:
    """Video id -> frame numbers listed in annotation files and/or test lists."""
    from abaw.data.annotations import read_annotations
    from abaw.data.testlist import read_test_list

    want: dict[str, set[int]] = {}
    for p in paths:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:  # read_text reports bad bytes
                head = f.readline()
        except OSError as e:
            raise AbawError(f"{p}: cannot read ({e.strerror})") from None
        if "AU1" in head or head.count(",") >= 10:
            ann = read_annotations(p)
            for v in ann.videos:
                sl = ann.video_slice(v)
                want.setdefault(v, set()).update(ann.frame[sl].tolist())
        else:
            tl = read_test_list(p)
            for v, fr in zip(tl.video, tl.frame.tolist()):
                want.setdefault(v, set()).add(fr)
    return want


# ---------------------------------------------------------------------------- planning


@dataclass
class _Output:
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


@dataclass
class _Job:
    source: Source
    policy: str  # for videos
    outputs: list[_Output]
    settings: dict[str, Any]
    folder: FrameFolder | None = None

    @property
    def detect(self) -> bool:
        return any(o.new_index for o in self.outputs)


def _outputs_for(src: Source, cfg: ExtractConfig, only: dict[str, set[int]] | None) -> tuple[str, list[tuple[str, int]]]:
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


def _mismatch(attrs: dict[str, Any], job: _Job, out: _Output) -> str | None:
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
    import hashlib

    arr = np.asarray(sorted(wanted), dtype="<i8")
    return f"{len(arr)} frames, sha256 {hashlib.sha256(arr.tobytes()).hexdigest()[:16]}"


class _Refusal(Exception):
    pass


def _plan(job: _Job, fs: FeatureStore, bbs: list[Backbone], fps: dict[str, dict], overwrite: bool) -> None:
    """Decide per output: skip, resume (some backbones) or extract; raise _Refusal on conflicts."""
    keep = []
    for out in job.outputs:
        if not fs.has_video(out.video):
            out.keys = [(b, False) for b in bbs]
            keep.append(out)
            continue
        attrs = fs.video_attrs(out.video)
        why = _mismatch(attrs, job, out)
        if why is None and attrs.get("selection", "all") != out.selection:
            why = "cached with a different frame selection (--only)"
        if why is not None:
            if not overwrite:
                raise _Refusal(f"{out.video}: {why}")
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
                    raise _Refusal(f"{out.video}: features {b.key!r} were made by different weights or "
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
                    raise _Refusal(f"{out.video}: stored index has no landmarks to resume from")
                out.stored_landmarks = lm.astype(np.float32)
            keep.append(out)
        else:
            out.keys = []
            keep.append(out)  # complete: reported as skipped
    job.outputs = keep


def _fp_diff(a: dict, b: dict) -> str:
    keys = [k for k in ("spec", "dim", "preprocess", "weights_sha256") if a.get(k) != b.get(k)]
    return "differs in " + ", ".join(keys) if keys else "differs"


def shard(jobs: list[_Job], rank: int, world: int) -> list[_Job]:
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


# ---------------------------------------------------------------------------- writing


@dataclass
class _VideoState:
    out: _Output
    job: _Job
    frame: list[np.ndarray] = field(default_factory=list)
    timestamp: list[np.ndarray] = field(default_factory=list)
    face: list[np.ndarray] = field(default_factory=list)
    box: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    expected: int = 0
    received: int = 0
    closed: bool = False
    n_rows: int = 0
    preview: PreviewCollector | None = None
    failed: bool = False


class _Sink:
    """Collects features per cache video and writes each video once it is complete.

    Writing (Zarr encoding, files, renames, previews) happens in one background thread,
    in completion order, so it overlaps with the next batches' compute; at most
    `max_pending` finished videos wait in RAM.
    """

    def __init__(self, fs: FeatureStore, fps: dict[str, dict], summary: ExtractSummary, timer: _Timer,
                 preview: str | None, extra_attrs: dict[str, Any], background: bool = True, max_pending: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.fs = fs
        self.fps = fps
        self.summary = summary
        self.timer = timer
        self.preview = Path(preview) if preview else None
        self.extra_attrs = extra_attrs
        self.states: dict[str, _VideoState] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abaw-write") if background else None
        self.pending: list[Any] = []
        self.max_pending = max_pending

    def finish(self, wait_only: bool = False) -> None:
        """Wait for every queued write; re-raise the first write error unless `wait_only`."""
        err = None
        for f in self.pending:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - surfaced below
                err = err or e
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if err is not None and not wait_only:
            raise err

    def open(self, out: _Output, job: _Job) -> _VideoState:
        st = _VideoState(out=out, job=job, parts={b.key: [] for b, _ in out.keys})
        if self.preview is not None:
            st.preview = PreviewCollector()
        self.states[out.video] = st
        return st

    def needed_keys(self, owners: Iterable[str]) -> set[str]:
        keys: set[str] = set()
        for o in owners:
            st = self.states.get(o)
            if st is not None:
                keys.update(st.parts)
        return keys

    def add(self, video: str, rows: np.ndarray, feats: dict[str, np.ndarray]) -> None:
        st = self.states.get(video)
        if st is None or st.failed:
            return
        for k in st.parts:
            st.parts[k].append((rows, feats[k]))
        st.received += len(rows)
        self._maybe_write(st)

    def close(self, video: str) -> None:
        st = self.states.get(video)
        if st is not None:
            st.closed = True
            self._maybe_write(st)

    def fail(self, job: _Job, error: str) -> None:
        for o in job.outputs:
            st = self.states.pop(o.video, None)
            if st is not None:
                st.failed = True
        error = error.removeprefix(f"{job.source.path}: ")
        self.summary.failed.append({"source": job.source.path, "error": error})

    def _maybe_write(self, st: _VideoState) -> None:
        if not st.closed or st.received < st.expected or st.failed:
            return
        self.states.pop(st.out.video, None)
        if self.pool is None:
            self._write_timed(st)
            return
        self.pending.append(self.pool.submit(self._write_timed, st))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()  # raises a write error here, in the main thread

    def _write_timed(self, st: _VideoState) -> None:
        with self.timer("write"):
            self._write(st)

    def _write(self, st: _VideoState) -> None:
        out, job = st.out, st.job
        if out.new_index:
            frame = np.concatenate(st.frame) if st.frame else np.zeros(0, np.int32)
            n = len(frame)
            face = np.concatenate(st.face) if st.face else np.zeros(0, bool)
            ts = np.concatenate(st.timestamp) if st.timestamp else np.zeros(0)
            extra = {}
            if job.source.kind == "video":
                extra = {"box": np.concatenate(st.box).astype(np.float32).reshape(n, 4),
                         "landmarks": np.concatenate(st.landmarks).astype(np.float32).reshape(n, 5, 2),
                         "score": np.concatenate(st.score).astype(np.float32).reshape(n)}
            attrs = {"source": job.source.describe(), "settings": job.settings,
                     "selection": out.selection, **self.extra_attrs}
            if job.source.kind == "video":
                attrs["policy"] = job.policy
                attrs["person"] = ["left", "right"][out.side] if job.policy == "left-right" else "main"
            self.fs.write_video(out.video, frame, ts, face, attrs, extra=extra, overwrite=out.overwrite_index)
            self.summary.frames += n
            self.summary.faces += int(face.sum())
        else:
            n = len(out.stored.frame)
            face = out.stored.face
            self.summary.frames += n
            self.summary.faces += int(face.sum())
        for b, ow in out.keys:
            feats = np.zeros((n, b.dim), np.float16)
            for rows, f in st.parts[b.key]:
                feats[rows] = f
            fp = dict(self.fps[b.key])
            self.fs.write_features(out.video, b.key, feats, fp, overwrite=ow)
        self.summary.done.append(out.video)
        if st.preview is not None and self.preview is not None:
            frames = frame if out.new_index else out.stored.frame
            title = f"{out.video}: {int(face.sum())}/{len(frames)} frames with a face"
            contact_sheet(self.preview / f"{out.video}.png", title, st.preview.sample())


# ---------------------------------------------------------------------------- forward


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Forwarder:
    """Runs every backbone on fixed-size batches of crops gathered across videos."""

    def __init__(self, bbs: list[Backbone], batch: int, device: torch.device, precision: str, sink: _Sink,
                 timer: _Timer):
        self.bbs = bbs
        self.batch = batch
        self.device = device
        self.precision = precision
        self.sink = sink
        self.timer = timer
        self.pending: list[tuple[torch.Tensor, str, np.ndarray]] = []
        self.n = 0

    def push(self, crops: torch.Tensor, owner: str, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.pending.append((crops, owner, np.asarray(rows, np.int64)))
        self.n += len(rows)
        while self.n >= self.batch:
            self._run(self.batch)

    def flush(self) -> None:
        while self.n > 0:
            self._run(min(self.n, self.batch))

    def _run(self, n: int) -> None:
        take: list[tuple[torch.Tensor, str, np.ndarray]] = []
        need = n
        while need > 0:
            c, o, r = self.pending[0]
            if len(r) <= need:
                take.append(self.pending.pop(0))
                need -= len(r)
            else:
                take.append((c[:need], o, r[:need]))
                self.pending[0] = (c[need:], o, r[need:])
                need = 0
        self.n -= n
        with self.timer("forward"):
            x = torch.cat([c.to(self.device, non_blocking=True) for c, _, _ in take])
            if n < self.batch:  # fixed batch shape: a frame's result never depends on its batch
                x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
            keys = self.sink.needed_keys(o for _, o, _ in take)
            feats: dict[str, np.ndarray] = {}
            for b in self.bbs:
                if b.key not in keys:
                    continue
                with _autocast(self.device, self.precision):
                    y = b(x)
                y = y.reshape(len(y), -1)[:n]
                if y.shape[1] != b.dim:
                    raise AbawError(f"backbone {b.spec}: produced {y.shape[1]}-d features, declared {b.dim}")
                feats[b.key] = y.float().cpu().numpy().astype(np.float16)
        i = 0
        for c, o, r in take:
            self.sink.add(o, r, {k: v[i:i + len(r)] for k, v in feats.items()})
            i += len(r)


# ---------------------------------------------------------------------------- the run


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise AbawError(f"--device {name}: CUDA is not available on this machine")
        if d.index is None:
            d = torch.device(f"cuda:{local_rank}")
    return d


def _precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if device.type == "cpu" and name == "fp16":
            raise AbawError("--precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise AbawError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if not 0 <= rank < max(1, world):
        raise AbawError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, max(1, world), local


def _init_group(rank: int, world: int) -> bool:
    import datetime

    import torch.distributed as dist

    if world <= 1 or "MASTER_ADDR" not in os.environ or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(hours=12))
    return True


def extract(inputs: Sequence[str | os.PathLike] | str | os.PathLike,
            store: str | os.PathLike | FeatureStore,
            backbones: Sequence[str | Backbone],
            config: ExtractConfig = ExtractConfig(),
            progress: bool = True,
            rank: int | None = None, world: int | None = None) -> ExtractSummary:
    """Extract features of `backbones` (specs or built Backbones) for `inputs` into `store`.

    Returns a summary; failed sources are listed in it (the others complete). Raises
    AbawError before doing any work if a stored video conflicts (other settings or
    weights) and `config.overwrite` is not set.
    """
    t_start = time.perf_counter()
    cfg = config
    cfg.validate()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not backbones:
        raise AbawError("extract: give at least one backbone (e.g. --backbone timm:resnet50)")
    env_rank, env_world, local_rank = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    device = _device(cfg.device, local_rank)
    precision = _precision(cfg.precision, device)
    sources = discover(inputs, cfg.kind)
    only = read_only_lists(cfg.only) if cfg.only else None
    grouped = _init_group(rank, world) if world > 1 else False
    try:
        fs = _open_store(store, rank, grouped)
        return _extract(sources, only, fs, backbones, cfg, device, precision, progress, rank, world, grouped,
                        t_start)
    finally:
        if grouped:
            import torch.distributed as dist

            dist.destroy_process_group()


def _open_store(store: str | os.PathLike | FeatureStore, rank: int, grouped: bool) -> FeatureStore:
    if isinstance(store, FeatureStore):
        return store
    if not grouped:
        return FeatureStore(store, "a")
    import datetime

    import torch.distributed as dist

    fs = FeatureStore(store, "a") if rank == 0 else None  # rank 0 creates it, the others wait
    dist.monitored_barrier(timeout=datetime.timedelta(minutes=30))
    return fs or FeatureStore(store, "a")


def _extract(sources: list[Source], only: dict[str, set[int]] | None, fs: FeatureStore,
             backbones: Sequence[str | Backbone], cfg: ExtractConfig, device: torch.device, precision: str,
             progress: bool, rank: int, world: int, grouped: bool, t_start: float) -> ExtractSummary:
    bbs: list[Backbone] = []
    for b in backbones:
        bb = create_backbone(b, device) if isinstance(b, str) else b
        bb.model.to(device)
        if device.type == "cuda":
            bb.model.to(memory_format=torch.channels_last)
        bbs.append(bb)
    keys = [b.key for b in bbs]
    if len(set(keys)) != len(keys):
        raise AbawError(f"two backbones share a cache key ({keys}); give one a key= option")
    # through JSON, as stored in the cache (tuples become lists), so comparisons are like for like
    fps = {b.key: json.loads(json.dumps(b.fingerprint())) for b in bbs}
    crop = cfg.crop_size or max(b.preprocess.input_size for b in bbs)

    detector_settings = {"detector": f"mtcnn ({cfg.detector})", "detect_size": cfg.detect_size,
                         "min_face": cfg.min_face, "thresholds": list(cfg.thresholds), "factor": 0.709}
    jobs: list[_Job] = []
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
            outputs.append(_Output(video=vid, side=side, wanted=wanted, selection=_selection(wanted)))
        jobs.append(_Job(source=src, policy=policy, outputs=outputs, settings=settings))

    if only is not None and not jobs:
        raise AbawError(f"none of the {len(sources)} input videos is listed in {', '.join(cfg.only)}")
    # plan every job on every rank (cheap), so a conflict stops all ranks alike
    refusals = []
    for job in jobs:
        try:
            _plan(job, fs, bbs, fps, cfg.overwrite)
        except _Refusal as e:
            refusals.append(str(e))
    if refusals:
        raise AbawError(f"{fs.path}: {len(refusals)} cached videos conflict with this run, e.g. {refusals[0]}; "
                        "rerun with --overwrite to replace them")
    if grouped:
        import datetime

        import torch.distributed as dist

        if rank == 0:
            fs.clear_staging()
        dist.monitored_barrier(timeout=datetime.timedelta(minutes=30))
    elif world == 1:
        fs.clear_staging()
    mine = shard(jobs, rank, world)
    summary = ExtractSummary(store=str(fs.path), world=1, device=str(device), precision=precision)
    summary.videos = sum(len(j.outputs) for j in mine)
    _run(mine, fs, bbs, fps, cfg, crop, device, precision, only, summary, progress, rank, world)
    summary.wall_s = time.perf_counter() - t_start
    if grouped:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, summary.to_dict())
        summary = ExtractSummary.merge(parts)
    return summary


def _run(jobs: list[_Job], fs: FeatureStore, bbs: list[Backbone], fps: dict[str, dict], cfg: ExtractConfig,
         crop: int, device: torch.device, precision: str, only: dict[str, set[int]] | None,
         summary: ExtractSummary, progress: bool, rank: int, world: int) -> None:
    from abaw import __version__

    timer = _Timer()
    from abaw.config import to_dict

    run = {"device": device.type, "precision": precision}
    extra_attrs = {"extracted_by": f"abaw {__version__}", "config": to_dict(cfg), "run": run}
    fps = {k: {**v, "extraction": run} for k, v in fps.items()}  # informational: not compared
    # a GPU leaves the CPU idle while it computes: write in the background there; on CPU
    # the writer would only compete with the forward for the same cores
    background = device.type == "cuda" if BACKGROUND_WRITES is None else BACKGROUND_WRITES
    sink = _Sink(fs, fps, summary, timer, cfg.preview, extra_attrs, background=background)
    fwd = _Forwarder(bbs, cfg.batch_size, device, precision, sink, timer)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    todo: list[_Job] = []
    for job in jobs:
        for o in job.outputs:
            if not o.keys:
                summary.skipped.append(o.video)
        job.outputs = [o for o in job.outputs if o.keys]
        if job.outputs:
            todo.append(job)
    vids = [j for j in todo if j.source.kind == "video"]
    folders = [j for j in todo if j.source.kind == "frames"]
    from tqdm.auto import tqdm

    bar = tqdm(total=0, unit="frame", desc=f"extract[{rank}/{world}]" if world > 1 else "extract",
               disable=not progress, position=rank if world > 1 else None, dynamic_ncols=True, smoothing=0.1,
               delay=0.5)
    ok = False
    try:
        with torch.inference_mode():
            if folders:
                _run_folders(folders, cfg, crop, device, sink, fwd, timer, bar, summary)
            if vids:
                _run_videos(vids, cfg, crop, device, sink, fwd, timer, bar)
            fwd.flush()
        ok = True
    finally:
        sink.finish(wait_only=not ok)  # completed videos are always written out
        bar.close()
    for name, st in list(sink.states.items()):  # should not happen: a bug, not a user error
        sink.fail(st.job, f"internal: {name} incomplete ({st.received}/{st.expected} rows)")
    summary.timings = {k: round(v, 3) for k, v in timer.t.items()}


# ---------------------------------------------------------------------------- frame folders


def _run_folders(jobs: list[_Job], cfg: ExtractConfig, crop: int, device: torch.device, sink: _Sink,
                 fwd: _Forwarder, timer: _Timer, bar, summary: ExtractSummary) -> None:
    ready: list[_Job] = []
    rows: list[np.ndarray | None] = []
    for job in jobs:
        out = job.outputs[0]
        try:
            folder = list_frames(job.source.path, out.video, out.wanted)
        except (AbawError, OSError) as e:
            sink.fail(job, str(e))
            continue
        if not out.new_index:
            if not np.array_equal(folder.frame, out.stored.frame):
                sink.fail(job, f"frame files differ from the cached index of {out.video} (use --overwrite)")
                continue
            r = np.flatnonzero(out.stored.face)
        else:
            if len(folder) == 0:
                sink.fail(job, f"{job.source.path}: no frame images" + (" listed by --only" if out.wanted else ""))
                continue
            r = None
        job.folder = folder
        ready.append(job)
        rows.append(r)
    if not ready:
        return
    states = []
    for job, r in zip(ready, rows):
        out = job.outputs[0]
        st = sink.open(out, job)
        st.n_rows = len(job.folder)
        states.append((st, len(job.folder) if r is None else len(r)))
        if out.new_index:
            st.frame = [job.folder.frame]
            st.timestamp = [np.full(len(job.folder), np.nan)]
            st.face = [np.zeros(len(job.folder), bool)]
    bar.total = sum(n for _, n in states)
    bar.refresh()
    ds = FrameDataset([j.folder for j in ready], rows, crop)
    # CPU: the forward already uses every core, a reader process would only compete with it
    # (reading 112 px JPEGs costs a few % of a forward); GPU: read in parallel while it computes
    workers = cfg.workers if cfg.workers >= 0 else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    loader = frame_loader(ds, cfg.batch_size, workers, pin_memory=device.type == "cuda")
    seen = [0] * len(ready)
    t0 = time.perf_counter()
    for owner, row, imgs, ok in loader:
        timer.add("images", time.perf_counter() - t0)
        owner_np, row_np, ok_np = owner.numpy(), row.numpy(), ok.numpy().astype(bool)
        imgs_dev = imgs.to(device, non_blocking=True)  # one (pinned, async) copy per batch
        for i in np.unique(owner_np):
            sel = np.flatnonzero(owner_np == i)
            st, total = states[i]
            out = st.out
            good = sel[ok_np[sel]]
            if out.new_index:
                st.face[0][row_np[sel]] = ok_np[sel]
                summary.unreadable += int((~ok_np[sel]).sum())
            if st.preview is not None:
                for j in good:
                    if st.preview.wants(int(row_np[j])):
                        st.preview.add(int(row_np[j]), int(ready[i].folder.frame[row_np[j]]), imgs[j].numpy())
            st.expected += len(good)
            if len(good) == len(sel):  # rows of one folder are contiguous in a batch: a view
                fwd.push(imgs_dev[sel[0]:sel[-1] + 1], out.video, row_np[sel])
            elif len(good):
                fwd.push(imgs_dev[torch.from_numpy(good).to(device)], out.video, row_np[good])
            seen[i] += len(sel)
            if seen[i] == total:
                sink.close(out.video)
        bar.update(len(owner_np))
        t0 = time.perf_counter()


# ---------------------------------------------------------------------------- videos


def _decode_thread(jobs: list[_Job], q: queue.Queue, chunk: int, pin: bool, stop: threading.Event,
                   timer: _Timer) -> None:
    def alloc(n: int, h: int, w: int):
        return torch.empty((n, h, w, 3), dtype=torch.uint8).pin_memory().numpy()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    for job in jobs:
        if not put(("start", job, None)):
            return
        try:
            it = iter_frames(job.source.path, chunk, alloc=alloc if pin else None)
            while True:
                t0 = time.perf_counter()
                try:
                    ch = next(it)
                except StopIteration:
                    break
                finally:
                    timer.add("decode", time.perf_counter() - t0)
                if not put(("chunk", job, ch)):
                    return
            if not put(("end", job, None)):
                return
        except VideoError as e:
            put(("error", job, str(e)))
        except Exception as e:  # noqa: BLE001 - any failure of one video must not stop the others
            put(("error", job, f"{job.source.path}: {type(e).__name__}: {e}"))
    put(("done", None, None))


@dataclass
class _VideoWork:
    job: _Job
    selector: FaceSelector
    states: list[_VideoState]
    pos: list[int]  # per output: next position in the stored index (reuse)
    width: int = 0
    n_decoded: int = 0


def _run_videos(jobs: list[_Job], cfg: ExtractConfig, crop: int, device: torch.device, sink: _Sink,
                fwd: _Forwarder, timer: _Timer, bar) -> None:
    detector = None
    if any(j.detect for j in jobs):
        detector = FaceDetector(device, cfg.detect_size, cfg.min_face, cfg.thresholds, impl=cfg.detector)
    total = 0
    for j in jobs:
        try:
            total += probe(j.source.path).estimated_frames()
        except VideoError:
            pass
    bar.total = (bar.total or 0) + total
    bar.refresh()
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    th = threading.Thread(target=_decode_thread, args=(jobs, q, cfg.detect_batch, device.type == "cuda", stop, timer),
                          daemon=True, name="abaw-decode")
    th.start()
    work: _VideoWork | None = None
    failed: set[int] = set()
    try:
        while True:
            t0 = time.perf_counter()
            kind, job, payload = q.get()
            timer.add("decoded frames", time.perf_counter() - t0)
            if kind == "done":
                break
            if id(job) in failed:
                continue
            try:
                if kind == "start":
                    states = [sink.open(o, job) for o in job.outputs]
                    work = _VideoWork(job, FaceSelector(job.policy, cfg.track_iou, cfg.track_reset, cfg.min_score), states,
                                      [0] * len(states))
                elif kind == "chunk":
                    assert work is not None and work.job is job
                    _video_chunk(work, payload, detector, crop, device, fwd, timer)
                    bar.update(len(payload.frame))
                elif kind == "end":
                    assert work is not None and work.job is job
                    _video_end(work, sink)
                    work = None
                elif kind == "error":
                    failed.add(id(job))
                    sink.fail(job, payload)
                    work = None
            except (AbawError, RuntimeError, ValueError) as e:
                failed.add(id(job))
                sink.fail(job, f"{job.source.path}: {type(e).__name__}: {e}")
                work = None
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        th.join()


def _video_chunk(w: _VideoWork, ch, detector: FaceDetector | None, crop: int, device: torch.device,
                 fwd: _Forwarder, timer: _Timer) -> None:
    frames_cpu = torch.from_numpy(ch.rgb) if isinstance(ch.rgb, np.ndarray) else ch.rgb
    w.width = int(frames_cpu.shape[2])
    w.n_decoded += len(ch.frame)
    frames = frames_cpu.to(device, non_blocking=True)
    picks = None
    dets = None
    if w.job.detect:
        with timer("detect"):
            dets = detector(frames)
            picks = [w.selector.select(d, w.width) for d in dets]
    for k, st in enumerate(w.states):
        out = st.out
        if out.new_index:
            if out.wanted is None:
                keep = np.ones(len(ch.frame), bool)
            else:
                if out.wanted_arr is None:
                    out.wanted_arr = np.fromiter(out.wanted, dtype=np.int64)
                keep = np.isin(ch.frame, out.wanted_arr)
            idx = np.flatnonzero(keep)
            n0 = st.n_rows
            box = np.full((len(idx), 4), np.nan, np.float32)
            lm = np.full((len(idx), 5, 2), np.nan, np.float32)
            score = np.full(len(idx), np.nan, np.float32)
            face = np.zeros(len(idx), bool)
            for r, i in enumerate(idx):
                p = picks[i][out.side]
                if p >= 0:
                    d = dets[i]
                    face[r] = True
                    box[r], lm[r], score[r] = d.boxes[p], d.landmarks[p], d.scores[p]
            st.frame.append(ch.frame[idx])
            st.timestamp.append(ch.timestamp[idx])
            st.face.append(face)
            st.box.append(box)
            st.landmarks.append(lm)
            st.score.append(score)
            st.n_rows += len(idx)
            fr = np.flatnonzero(face)
            src_idx = idx[fr]
            rows = n0 + fr
            land = lm[fr]
        else:
            sf = out.stored.frame
            lo = np.searchsorted(sf, ch.frame[0])
            hi = np.searchsorted(sf, ch.frame[-1], side="right")
            rows_all = np.arange(lo, hi)
            sel = rows_all[out.stored.face[rows_all]]
            src_idx = np.searchsorted(ch.frame, sf[sel])
            rows = sel
            land = out.stored_landmarks[sel]
            w.pos[k] = hi
        if len(rows) == 0:
            continue
        with timer("align"):
            crops = warp_faces(frames, src_idx, land.astype(np.float32), crop)
        if st.preview is not None:
            cc = None
            for j, r in enumerate(rows):
                if st.preview.wants(int(r)):
                    cc = crops.cpu().numpy() if cc is None else cc
                    frame_no = int(ch.frame[src_idx[j]])
                    st.preview.add(int(r), frame_no, cc[j])
        st.expected += len(rows)
        fwd.push(crops, out.video, rows)


def _video_end(w: _VideoWork, sink: _Sink) -> None:
    for k, st in enumerate(w.states):
        out = st.out
        if not out.new_index and w.pos[k] != len(out.stored.frame):
            raise AbawError(f"{w.job.source.path}: decodes to fewer frames than the cached index of {out.video}")
        if out.new_index and out.wanted is None and st.n_rows == 0:
            raise AbawError(f"{w.job.source.path}: no frames decoded")
    for st in w.states:
        sink.close(st.out.video)
