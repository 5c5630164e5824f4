"""The writer of `abaw extract`: collects features per cache video and writes each video
once it is complete (index first, then one array per backbone, then its preview).

Writing (Zarr encoding, files, renames, previews) happens inline on CPU, or in one
background thread on GPU, in completion order, so it overlaps with the next batches'
compute; at most `max_pending` finished videos wait in RAM. Each write returns a
`Written` result, collected in the main thread: nothing is shared between the threads
but the timer (which has a lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from abaw.cache.store import FeatureStore
from abaw.extract.config import Timer
from abaw.extract.plan import Job, Output
from abaw.extract.preview import PreviewCollector, contact_sheet


@dataclass
class VideoState:
    """What has arrived so far for one cache video."""

    out: Output
    job: Job
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
    unreadable: int = 0  # frame images that could not be decoded
    preview: PreviewCollector | None = None
    failed: bool = False
    partial: dict[str, Any] | None = None  # {decoded, expected, reason}: kept the frames before damage


@dataclass(frozen=True)
class Written:
    """One cache video written by this run."""

    video: str
    frames: int  # index rows
    faces: int  # of which with a face
    unreadable: int = 0
    partial: dict[str, Any] | None = None  # {source, decoded, expected, reason}


@dataclass(frozen=True)
class Failure:
    source: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "error": self.error}


class Sink:
    """Receives features per cache video (`add`), writes each when it is complete."""

    def __init__(self, fs: FeatureStore, fps: dict[str, dict], timer: Timer, preview: str | None,
                 extra_attrs: dict[str, Any], background: bool = True, max_pending: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.fs = fs
        self.fps = fps
        self.timer = timer
        self.preview = Path(preview) if preview else None
        self.extra_attrs = extra_attrs
        self.states: dict[str, VideoState] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abaw-write") if background else None
        self.pending: list[Any] = []
        self.max_pending = max_pending
        self.written: list[Written] = []  # in completion order (main thread only)
        self.failed: list[Failure] = []  # (main thread only)

    def finish(self, wait_only: bool = False) -> None:
        """Wait for every queued write; re-raise the first write error unless `wait_only`."""
        err = None
        for f in self.pending:
            try:
                self.written.append(f.result())
            except BaseException as e:  # noqa: BLE001 - surfaced below
                err = err or e
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if err is not None and not wait_only:
            raise err
        for name, st in list(self.states.items()):  # should not happen: a bug, not a user error
            self.fail(st.job, f"internal: {name} incomplete ({st.received}/{st.expected} rows)")

    def open(self, out: Output, job: Job) -> VideoState:
        st = VideoState(out=out, job=job, parts={b.key: [] for b, _ in out.keys})
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

    def fail(self, job: Job, error: str) -> None:
        for o in job.outputs:
            st = self.states.pop(o.video, None)
            if st is not None:
                st.failed = True
        self.failed.append(Failure(job.source.path, error.removeprefix(f"{job.source.path}: ")))

    def _maybe_write(self, st: VideoState) -> None:
        if not st.closed or st.received < st.expected or st.failed:
            return
        self.states.pop(st.out.video, None)
        if self.pool is None:
            self.written.append(self._write_timed(st))
            return
        self.pending.append(self.pool.submit(self._write_timed, st))
        while len(self.pending) > self.max_pending or (self.pending and self.pending[0].done()):
            self.written.append(self.pending.pop(0).result())  # raises a write error here, in the main thread

    def _write_timed(self, st: VideoState) -> Written:
        with self.timer("write"):
            return self._write(st)

    def _write(self, st: VideoState) -> Written:
        out, job = st.out, st.job
        partial = None if st.partial is None else {"source": job.source.path, **st.partial}
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
            self.fs.write_video(out.video, frame, ts, face, attrs, extra=extra, overwrite=out.overwrite_index,
                                partial=partial)
        else:
            frame = out.stored.frame
            n = len(frame)
            face = out.stored.face
        for b, ow in out.keys:
            feats = np.zeros((n, b.dim), np.float16)
            for rows, f in st.parts[b.key]:
                feats[rows] = f
            self.fs.write_features(out.video, b.key, feats, dict(self.fps[b.key]), overwrite=ow)
        if st.preview is not None and self.preview is not None:
            title = f"{out.video}: {int(face.sum())}/{len(frame)} frames with a face"
            contact_sheet(self.preview / f"{out.video}.png", title, st.preview.sample())
        return Written(out.video, n, int(face.sum()), st.unreadable, partial)
