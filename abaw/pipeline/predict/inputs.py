"""What `abaw predict --video` accepts: videos, images, folders of frames or of photos, mixes.

- a video file (mp4, avi, mov, mkv, webm, ...): every decoded frame, numbered from 1;
- an image file (jpg, jpeg, png, bmp, webp): one frame;
- a folder whose images are all named by a number (`00001.jpg`, `7.png`): one frame
  sequence (a video given as frames; frame numbers from the names, faces tracked through it);
- any other folder: each video and each image in it is an input of its own, and each
  sub-folder is read by the same rules (one level down; hidden entries are skipped).

Inputs are found before anything runs; a path that is neither is reported, never fatal
to the others. Input names (the `input` column) are the paths as given or found.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.errors import AbawError
from abaw.extract.frames import IMAGE_EXTS
from abaw.extract.video import is_video

@dataclass(frozen=True)
class Item:
    """One input: a video, an image, or a folder of numbered frames."""

    kind: str  # video | image | frames
    path: str
    files: tuple[str, ...] = ()  # frames: the image files, sorted by frame number
    numbers: tuple[int, ...] = ()  # frames: their frame numbers


@dataclass(frozen=True)
class Chunk:
    """Consecutive frames of one input; `rgb` holds same-sized frames [B, H, W, 3]."""

    frame: np.ndarray  # int64 [B]
    timestamp: np.ndarray  # float64 [B], NaN where unknown
    rgb: np.ndarray  # uint8 [B, H, W, 3]


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def _folder(p: Path, depth: int, items: list[Item], problems: list[str]) -> None:
    entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
    images = [e for e in entries if e.is_file() and is_image(e)]
    videos = [e for e in entries if e.is_file() and is_video(e)]
    if images and not videos and all(e.stem.isdigit() for e in images):
        nums = [int(e.stem) for e in images]
        if len(set(nums)) == len(nums):
            order = np.argsort(nums, kind="stable")
            items.append(Item("frames", str(p), tuple(str(images[i]) for i in order),
                              tuple(int(nums[i]) for i in order)))
            images = []
    items.extend(Item("video", str(e)) for e in videos)
    items.extend(Item("image", str(e)) for e in images)
    if depth == 0:
        for e in entries:
            if e.is_dir():
                _folder(e, 1, items, problems)


def discover_inputs(paths: list[str] | tuple[str, ...]) -> tuple[list[Item], list[str]]:
    """(inputs found, one-line problems for paths that are none)."""
    items: list[Item] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            if is_video(p):
                items.append(Item("video", str(p)))
            elif is_image(p):
                items.append(Item("image", str(p)))
            else:
                problems.append(f"{p}: not a video or image file (by its extension)")
        elif p.is_dir():
            n = len(items)
            _folder(p, 0, items, problems)
            if len(items) == n:
                problems.append(f"{p}: no videos or images found")
        else:
            problems.append(f"{p}: no such file or directory")
    seen: set[str] = set()
    unique = []
    for it in items:
        key = os.path.abspath(it.path)
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique, problems


def read_rgb(path: str) -> np.ndarray:
    """An image as RGB uint8 [H, W, 3] (EXIF rotation applied); AbawError naming it if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any decoding failure is this file's problem
        raise AbawError(f"{path}: cannot read the image ({type(e).__name__}: {str(e).splitlines()[0][:150]})") \
            from None


def iter_chunks(item: Item, chunk: int = 16, skipped: list[str] | None = None) -> Iterator[Chunk]:
    """The frames of an input. A frame sequence's unreadable image is skipped and named in
    `skipped` (the others go on); a video or a lone image that cannot be read raises AbawError."""
    if item.kind == "video":
        from abaw.extract.video import iter_frames

        for ch in iter_frames(item.path, chunk=chunk):
            yield Chunk(ch.frame, ch.timestamp, np.asarray(ch.rgb))
        return
    if item.kind == "image":
        yield Chunk(np.ones(1, np.int64), np.full(1, np.nan), read_rgb(item.path)[None])
        return
    for f, n in zip(item.files, item.numbers):  # frames may differ in size: one at a time
        try:
            rgb = read_rgb(f)
        except AbawError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
            continue
        yield Chunk(np.array([n], np.int64), np.full(1, np.nan), rgb[None])

