"""Exact video decoding with PyAV: every frame, numbered from 1 like Aff-Wild2.

Frame numbers are the 1-based position in decode (presentation) order, counted from
the frames actually decoded, never from container metadata (headers often claim a few
frames more or less than the stream holds). Timestamps are the frames' presentation
times in seconds. A display-matrix rotation (phone videos) is applied to the pixels.

Damage is never stored as a complete video: a decoder error part-way, frames the decoder
flags as corrupt (threaded decoding conceals errors that way instead of raising), or fewer
frames than the container announces (`TruncatedVideoError`, after the frames that did
decode were yielded; `decoded` says how many, for a caller that keeps partial videos).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from abaw.errors import AbawError

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                        ".ts", ".mts", ".3gp", ".ogv"})


class VideoError(AbawError):
    """A video cannot be opened or decoded."""


class DamagedVideoError(VideoError):
    """Decoding hit damaged data after `decoded` good frames (those were yielded)."""

    def __init__(self, path: str, reason: str, decoded: int, expected: int = 0):
        self.path = path
        self.decoded = decoded  # frames decoded (and yielded) before the damage, numbered 1..decoded
        self.expected = expected  # frames the container announces; 0 when unknown
        super().__init__(f"{path}: {reason}")


class TruncatedVideoError(DamagedVideoError):
    """The stream ended well before the frame count its container announces."""


# Decoded frames may fall short of the container's count by this much before the video is
# called truncated: headers over-count by a few frames (edit lists, dropped B-frames).
SHORT_TOLERANCE_FRAMES = 2
SHORT_TOLERANCE_FRACTION = 0.01


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (the frame count is only an estimate)."""

    path: str
    width: int
    height: int
    fps: float
    header_frames: int  # from metadata; 0 when unknown; may differ from what decodes
    duration: float  # seconds; 0 when unknown
    codec: str

    def estimated_frames(self) -> int:
        if self.header_frames > 0:
            return self.header_frames
        return int(round(self.duration * self.fps)) if self.duration and self.fps else 0

    def expected_frames(self) -> int:
        """The fewest frames the container vouches for (header count, duration x rate); 0
        when it says nothing. Used to detect truncation, with SHORT_TOLERANCE_*."""
        known = [n for n in (self.header_frames, round(self.duration * self.fps)) if n > 0]
        return min(known) if known else 0

    def is_short(self, decoded: int) -> bool:
        """Whether `decoded` frames are clearly fewer than the container announces."""
        exp = self.expected_frames()
        return exp > 0 and exp - decoded > max(SHORT_TOLERANCE_FRAMES, SHORT_TOLERANCE_FRACTION * exp)


@dataclass
class FrameChunk:
    """Consecutive decoded frames: numbers (1-based), timestamps (s) and RGB pixels."""

    frame: np.ndarray  # int64 [B]
    timestamp: np.ndarray  # float64 [B]
    rgb: np.ndarray  # uint8 [B, H, W, 3] (or a pinned torch tensor's numpy view)


def _open(path: str):
    import av

    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise VideoError(f"{path}: empty file (0 bytes), not a video")
        container = av.open(path)
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: cannot open video ({_msg(e, path)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def _msg(e: BaseException, path: str = "") -> str:
    s = str(e).strip().splitlines()
    text = s[0] if s else ""
    if path:
        text = text.replace(f": {path!r}", "").replace(f": '{path}'", "")
    return f"{type(e).__name__}: {text}"[:200]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the container header (fast; does not decode)."""
    path = os.fspath(path)
    c = _open(path)
    try:
        return _info(path, c)
    finally:
        c.close()


def _info(path: str, c) -> VideoInfo:
    s = c.streams.video[0]
    rate = s.average_rate or s.guessed_rate or s.base_rate
    fps = float(rate) if rate else 0.0
    dur = float(s.duration * s.time_base) if s.duration and s.time_base else (
        c.duration / 1e6 if c.duration else 0.0)
    return VideoInfo(path=path, width=int(s.codec_context.width), height=int(s.codec_context.height),
                     fps=fps, header_frames=int(s.frames or 0), duration=dur, codec=s.codec_context.name)


def _decode(path: str, c, threads: int = 0) -> Iterator:
    """Every decoded frame of the first video stream (threaded); raises DamagedVideoError
    on a decoder error or a corrupt-flagged frame, TruncatedVideoError on a short stream,
    always after yielding the good frames before the damage.

    Threaded decoding can swallow an error or lose the frames next to it, and how many
    depends on timing. So when anything is wrong the file is decoded again on one thread,
    which decides: its frames beyond those already yielded are yielded too, and its
    outcome (damaged, truncated, or fine after all) is the one raised. The threaded pass
    holds back two frames per thread, so frames next to the damage come from that exact
    pass (a fresh clone's CI once kept 15 frames of a video whose 14th decodes corrupt).
    """
    import av

    info = _info(path, c)
    s = c.streams.video[0]
    s.thread_type = "AUTO"
    if threads:
        s.thread_count = threads
    # a threaded decoder reports a problem up to one frame per thread late: hold that many
    # frames back, so the frames next to damaged data come from the exact pass, never from here
    lag = 2 * (threads or (os.cpu_count() or 1) + 1)
    held: collections.deque = collections.deque()
    n = 0
    try:
        for fr in c.decode(s):
            if getattr(fr, "is_corrupt", False):
                break
            held.append(fr)
            if len(held) > lag:
                n += 1
                yield held.popleft()
        else:
            if n + len(held) and not info.is_short(n + len(held)):
                yield from held
                return
    except av.error.FFmpegError:
        pass
    yield from _decode_exact(path, info, n)


def _decode_exact(path: str, info: VideoInfo, skip: int) -> Iterator:
    """Decode `path` on one thread, packet by packet; yield its good frames after the first
    `skip`; raise what it finds. The decoder goes on after the first error (yielding
    nothing more) to tell the two cases apart: frames that still decode after it, or a
    demuxer that gives up well before the end of the file, mean damaged data inside the
    stream (DamagedVideoError); otherwise fewer frames than the container announces mean
    the stream was cut (TruncatedVideoError)."""
    import av

    exp = info.expected_frames()
    of = f" of {exp} announced" if exp else ""
    c = _open(path)
    n = after = 0
    end = -1  # how far into the file the demuxer got (bytes)
    problem: str | None = None
    try:
        s = c.streams.video[0]
        s.thread_type = "NONE"
        for packet in c.demux(s):
            if packet.pos is not None and packet.pos >= 0:
                end = max(end, packet.pos + packet.size)
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                problem = problem or f"decoding failed after {n} frames{of} ({_msg(e)})"
                continue
            for fr in frames:
                if problem is None and getattr(fr, "is_corrupt", False):
                    problem = f"frame {n + 1} decodes corrupt ({n} good frames{of})"
                if problem is not None:
                    after += packet.size > 0  # the final flush only returns frames held back before the problem
                    continue
                n += 1
                if n > skip:
                    yield fr
    except av.error.FFmpegError as e:  # the demuxer itself gave up
        problem = problem or f"decoding failed after {n} frames{of} ({_msg(e)})"
    finally:
        c.close()
    kept = max(n, skip)
    if kept == 0:
        raise VideoError(f"{path}: no frame could be decoded" + (f" ({problem})" if problem else ""))
    size = os.path.getsize(path)
    stopped_inside = end >= 0 and size > 0 and end < 0.9 * size  # gave up well before the end of the data
    if problem is not None and (after > 0 or not info.is_short(n) or stopped_inside):
        raise DamagedVideoError(path, f"damaged: {problem}", kept, exp)
    if info.is_short(n):
        raise TruncatedVideoError(path, f"truncated: {n} frames decode, the container announces {exp}", kept, exp)


def _rotate(arr: np.ndarray, rotation: float) -> np.ndarray:
    k = int(round(rotation / 90.0)) % 4  # display matrix: counter-clockwise degrees
    return np.ascontiguousarray(np.rot90(arr, k)) if k else arr


def iter_frames(path: str | os.PathLike, chunk: int = 16, threads: int = 0,
                alloc=None) -> Iterator[FrameChunk]:
    """Decode every frame of `path` in chunks of `chunk` frames.

    `alloc(n, h, w)` may return a uint8 array to decode into (e.g. a pinned buffer).
    Raises VideoError if the file cannot be opened; DamagedVideoError (after yielding the
    frames before the damage) if decoding fails part-way, a frame decodes corrupt, or the
    stream is shorter than its container announces (TruncatedVideoError).
    """
    path = os.fspath(path)
    c = _open(path)
    try:
        s = c.streams.video[0]
        n = 0
        size: tuple[int, int] | None = None
        nums: list[int] = []
        stamps: list[float] = []
        frames: list[np.ndarray] = []
        rate = s.average_rate or s.guessed_rate
        fps = float(rate) if rate else 0.0

        def emit() -> FrameChunk:
            h, w = frames[0].shape[:2]
            buf = alloc(len(frames), h, w) if alloc else np.empty((len(frames), h, w, 3), np.uint8)
            for i, f in enumerate(frames):
                buf[i] = f
            out = FrameChunk(np.asarray(nums, np.int64), np.asarray(stamps, np.float64), buf)
            nums.clear(), stamps.clear(), frames.clear()
            return out

        try:
            for fr in _decode(path, c, threads):
                n += 1
                if size is None:
                    rot = float(getattr(fr, "rotation", 0) or 0)
                    arr = _rotate(fr.to_ndarray(format="rgb24"), rot)
                    size = (fr.width, fr.height)
                elif (fr.width, fr.height) != size:  # resolution change mid-stream: keep the first
                    arr = _rotate(fr.to_ndarray(format="rgb24", width=size[0], height=size[1]), rot)
                else:
                    arr = _rotate(fr.to_ndarray(format="rgb24"), rot)
                t = fr.time
                if t is None:
                    t = (n - 1) / fps if fps else float("nan")
                nums.append(n)
                stamps.append(float(t))
                frames.append(arr)
                if len(frames) == chunk:
                    yield emit()
        except DamagedVideoError:
            if frames:
                yield emit()  # the good frames before the damage, for a caller keeping partial videos
            raise
        if frames:
            yield emit()
    finally:
        c.close()


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames that decode (decodes the whole stream, no conversion); a damaged or
    truncated stream raises like `iter_frames`."""
    path = os.fspath(path)
    c = _open(path)
    try:
        return sum(1 for _ in _decode(path, c))
    finally:
        c.close()
