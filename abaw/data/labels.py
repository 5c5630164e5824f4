"""Label orders and invalid codes of the ABAW MTL challenge (see ABAW.md)."""

from __future__ import annotations

import re

AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26",
)
EXPR_NAMES: tuple[str, ...] = (
    "Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other",
)
N_AU = len(AU_NAMES)
N_EXPR = len(EXPR_NAMES)
TASKS: tuple[str, ...] = ("va", "expr", "au")

VA_INVALID = -5.0
EXPR_INVALID = -1
AU_INVALID = -1

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
