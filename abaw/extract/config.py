"""What `abaw extract` is asked to do (`ExtractConfig`) and what it did (`ExtractSummary`)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from abaw.errors import AbawError
from abaw.extract.faces import POLICIES
from abaw.runtime import PRECISIONS

FACE_CHOICES = ("auto",) + POLICIES
STALLS = ("decoded frames", "images")  # timers of the main thread waiting for data


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
    allow_partial: bool = False  # keep the frames decoded before a video's damage (marked partial; exit 2)

    def validate(self) -> None:
        if self.face not in FACE_CHOICES:
            raise AbawError(f"--face {self.face!r}: expected one of {', '.join(FACE_CHOICES)}")
        if self.kind not in ("auto", "videos", "frames"):
            raise AbawError(f"--kind {self.kind!r}: expected auto, videos or frames")
        if self.detector not in ("batched", "facenet"):
            raise AbawError(f"--detector {self.detector!r}: expected batched or facenet")
        if self.precision not in PRECISIONS:
            raise AbawError(f"--precision {self.precision!r}: expected {', '.join(PRECISIONS)}")
        if self.batch_size < 1 or self.detect_batch < 1:
            raise AbawError("batch sizes must be >= 1")
        if self.crop_size < 0 or (0 < self.crop_size < 16):
            raise AbawError(f"--crop-size {self.crop_size}: expected 0 (auto) or >= 16")


@dataclass
class ExtractSummary:
    """What a run did (merged over ranks when sharded)."""

    store: str
    world: int = 1
    videos: int = 0  # cache videos in scope
    done: list[str] = field(default_factory=list)  # written (or completed) by this run
    skipped: list[str] = field(default_factory=list)  # already complete
    failed: list[dict[str, str]] = field(default_factory=list)  # {"source", "error"}
    partial: list[dict[str, Any]] = field(default_factory=list)  # {"video", "source", "decoded", "expected", "reason"}
    frames: int = 0  # frames (index rows) processed
    faces: int = 0  # of which with a face
    unreadable: int = 0  # frame images that could not be decoded (recorded as no face)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # busy seconds per stage
    device: str = "cpu"
    precision: str = "fp32"

    @property
    def ok(self) -> bool:
        return not self.failed and not self.partial

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
            s.partial += p.get("partial", [])
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
                 + (f", {len(self.partial)} partial" if self.partial else "")
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
        for p in self.partial:
            of = f" of {p['expected']}" if p.get("expected") else ""
            lines.append(f"PARTIAL {p['video']}: {p['decoded']}{of} frames decoded, kept ({p['reason']})")
        return "\n".join(lines)


class Timer:
    """Busy seconds per stage, added from any thread."""

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
