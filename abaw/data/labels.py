"""Label orders and invalid codes of the ABAW MTL challenge (see ABAW.md)."""

from __future__ import annotations

import re

import numpy as np

AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26",
)
EXPR_NAMES: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)
N_AU = len(AU_NAMES)
N_EXPR = len(EXPR_NAMES)
TASKS: tuple[str, ...] = ("va", "expr", "au")
# The two dimensions of the VA task (the columns of its head) and the task names that train
# only some of them: `v` (valence), `a` (arousal); `va` (or `v` and `a`) trains both.
VA_DIMS: tuple[str, ...] = ("valence", "arousal")
VA_TOKENS: dict[str, tuple[str, ...]] = {"v": ("valence",), "a": ("arousal",), "va": VA_DIMS}
TASK_NAMES: tuple[str, ...] = ("va", "v", "a", "expr", "au")

VA_INVALID = -5.0
EXPR_INVALID = -1
AU_INVALID = -1



def split_tasks(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Task names as given (`va`, `v`, `a`, `expr`, `au`, in any order) -> (tasks, va_dims).

    `tasks` is a subset of TASKS in the given order (`v` / `a` stand for `va`), `va_dims` the
    VA dimensions trained, in VA_DIMS order (both when VA is not named). ValueError on an
    unknown, repeated or missing name.
    """
    names = [str(n).strip().lower() for n in names]
    bad = [n for n in names if n not in TASK_NAMES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"tasks: a non-empty list of distinct names from {', '.join(TASK_NAMES)} "
                         f"(v/a: valence/arousal only); got {','.join(names) or 'nothing'}")
    dims = {d for n in names if n in VA_TOKENS for d in VA_TOKENS[n]}
    tasks: list[str] = []
    for n in names:
        t = "va" if n in VA_TOKENS else n
        if t not in tasks:
            tasks.append(t)
    return tuple(tasks), tuple(d for d in VA_DIMS if d in dims) if dims else VA_DIMS


def task_names(tasks, va_dims=VA_DIMS) -> tuple[str, ...]:
    """The inverse of `split_tasks`: `va` written `v` or `a` when only that dimension is trained."""
    token = {VA_DIMS: "va", ("valence",): "v", ("arousal",): "a"}.get(tuple(va_dims), "va")
    return tuple(token if t == "va" else t for t in tasks)


# Frame numbers are 1-based and at most MAX_FRAME (2^31 - 1: two years of video at 30 fps,
# and what the cache's int32 frame index holds). Parsers keep them as int64 and refuse
# larger numbers with `file:line`, so nothing wraps (4294967297 never becomes frame 1).
MAX_FRAME = 2**31 - 1

ANNOTATION_HEADER = "image,valence,arousal,expression," + ",".join(AU_NAMES)
SUBMISSION_HEADER = "image,valence,arousal,expression,aus"

# `<video>/<frame>.jpg`: one path component for the video id, a decimal frame number.
_IMAGE_RE = re.compile(r"([^/\\\x00]+)/([0-9]+)\.jpg")


def parse_image_name(name: str) -> tuple[str, int] | None:
    """Split `video/00001.jpg` into ("video", 1); None if the name is not of that form.

    Names that could escape the data root (absolute paths, `..`, backslashes, extra
    path components, surrounding whitespace) are rejected.
    """
    m = _IMAGE_RE.fullmatch(name)
    if m is None:
        return None
    video = m.group(1)
    if video in (".", "..") or video != video.strip():
        return None
    return video, int(m.group(2))


def frame_problem(name: str, frame: int) -> str | None:
    """Why `frame` (parsed from image `name`) is not a usable frame number; None if it is."""
    if frame < 1:
        return f"frame number must be >= 1 in {name!r}"
    if frame > MAX_FRAME:
        return f"frame number {frame} in {name[:80]!r} is out of range (max {MAX_FRAME})"
    return None


def image_name(video: str, frame: int) -> str:
    """The canonical Aff-Wild2 image name: 5-digit, 1-based frame number."""
    return f"{video}/{frame:05d}.jpg"


def clip_of(video: str) -> str:
    """The clip a track belongs to: Aff-Wild2 names the two people of one clip `<clip>_left` and
    `<clip>_right`. They share the scene, the camera and the annotators, so any split that must
    not see a scored track (folds, cross-fitting) keeps a clip's tracks together."""
    return video.removesuffix("_left").removesuffix("_right")


def clip_ids(videos, video_idx) -> np.ndarray:
    """A clip id per row (`video_idx` indexes `videos`): split rows on it, not on the track."""
    names = [clip_of(v) for v in videos]
    index = {c: i for i, c in enumerate(sorted(set(names)))}
    of_video = np.array([index[c] for c in names], np.int64)
    vi = np.asarray(video_idx, np.int64)
    return of_video[vi] if len(of_video) else np.zeros(len(vi), np.int64)
