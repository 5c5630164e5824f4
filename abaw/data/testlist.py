"""Reading ABAW MTL test lists.

ABAW7 `MTL.txt`: header `image,valence,arousal,expression,aus`, then one image name per
line written with a trailing comma (`video45_1/00001.jpg,`). ABAW4 lists have no trailing
comma. Names may repeat; order and repetitions are kept, since the submission must follow
the list row by row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from abaw.data.labels import frame_problem, parse_image_name
from abaw.errors import FormatError
from abaw.io import read_text


@dataclass(frozen=True, eq=False)
class TestList:
    """The ordered entries of a test list (repeats kept)."""

    __test__ = False  # not a pytest test class

    path: str
    images: tuple[str, ...]
    video: tuple[str, ...]  # video id per entry
    frame: np.ndarray  # int64 per entry, at most MAX_FRAME
    trailing_comma: bool  # ABAW7 style

    def __len__(self) -> int:
        return len(self.images)

    @property
    def videos(self) -> tuple[str, ...]:
        """Unique video ids, sorted."""
        return tuple(sorted(set(self.video)))

    def unique_keys(self) -> list[tuple[str, int]]:
        """Unique (video, frame) keys in first-appearance order."""
        seen: dict[tuple[str, int], None] = {}
        for v, f in zip(self.video, self.frame.tolist()):
            seen.setdefault((v, f), None)
        return list(seen)


def read_test_list(path: str | os.PathLike) -> TestList:
    """Parse an ABAW7 (trailing comma) or ABAW4 (no comma) test list."""
    path = os.fspath(path)
    lines = read_text(path).splitlines()
    if not lines or not lines[0].strip().lower().startswith("image"):
        raise FormatError(path, "expected a header line starting with 'image'", 1)
    images: list[str] = []
    videos: list[str] = []
    frames: list[int] = []
    commas: set[bool] = set()
    for n, raw in enumerate(lines[1:], start=2):
        ln = raw.rstrip("\r")
        if not ln.strip():
            continue
        fields = ln.split(",")
        if len(fields) == 2 and fields[1] == "":
            commas.add(True)
        elif len(fields) == 1:
            commas.add(False)
        else:
            raise FormatError(path, f"expected one image name per line, got {ln[:80]!r}", n)
        name = fields[0]
        parsed = parse_image_name(name)
        if parsed is None:
            raise FormatError(path, f"bad image name {name!r} (expected <video>/<frame>.jpg)", n)
        problem = frame_problem(name, parsed[1])
        if problem:
            raise FormatError(path, problem, n)
        images.append(name)
        videos.append(parsed[0])
        frames.append(parsed[1])
    return TestList(
        path=path,
        images=tuple(images),
        video=tuple(videos),
        frame=np.asarray(frames, dtype=np.int64),
        trailing_comma=commas == {True},
    )


def read_entries(path: str | os.PathLike) -> TestList:
    """The frames to predict: a test list, or an annotation file (its images, in file order
    without duplicates), so that validation can be predicted and scored like the test set."""
    path = os.fspath(path)
    lines = read_text(path).splitlines()
    first = lines[1] if len(lines) > 1 else ""
    if first.count(",") < 15:
        return read_test_list(path)
    from abaw.data.annotations import read_annotations

    ann = read_annotations(path)
    order = np.argsort(ann.line, kind="stable") if ann.line is not None else np.arange(len(ann))
    videos = ann.video_of_rows()[order]
    frames = ann.frame[order]
    images = tuple(ann.images()[i] for i in order)
    return TestList(path=path, images=images, video=tuple(videos.tolist()), frame=frames.astype(np.int64),
                    trailing_comma=False)
