"""Reading ABAW MTL annotation files (`training_set_annotations.txt`, ...).

Format: one header line, then `image,valence,arousal,expression,AU1,...,AU26` per line,
`image = <video>/<frame>.jpg`. Invalid labels: valence/arousal -5, expression -1, all
12 AUs -1. Parsing is vectorised (a 170k-line file takes a fraction of a second) and any
malformed line is reported as `file:line: reason`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from abaw.data.labels import (
    AU_INVALID,
    EXPR_INVALID,
    N_AU,
    N_EXPR,
    VA_INVALID,
    frame_problem,
    image_name,
    parse_image_name,
)
from abaw.errors import AbawError, FormatError
from abaw.io import atomic_write, read_text

N_FIELDS = 4 + N_AU


def _duplicates(vid: np.ndarray, frame: np.ndarray, va: np.ndarray, expr: np.ndarray,
                au: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Rows i whose next row repeats their (video, frame) (rows sorted by video, frame),
    and the first such i whose labels differ from the repeat's (None if all agree)."""
    dup = np.flatnonzero((vid[1:] == vid[:-1]) & (frame[1:] == frame[:-1]))
    if not len(dup):
        return dup, None
    agree = (np.all(va[dup] == va[dup + 1], axis=1) & (expr[dup] == expr[dup + 1])
             & np.all(au[dup] == au[dup + 1], axis=1))
    return dup, None if agree.all() else int(dup[~agree][0])


@dataclass(frozen=True, eq=False)
class Annotations:
    """Labels of one or more annotation files, one row per unique image.

    Rows are sorted by (video id, frame number). `video_idx` indexes `videos`.
    Invalid labels keep their codes; use the `*_valid` masks.
    """

    videos: tuple[str, ...]
    video_idx: np.ndarray  # int32 [N]
    frame: np.ndarray  # int64 [N], 1-based, at most MAX_FRAME
    va: np.ndarray  # float32 [N, 2] (valence, arousal); -5 where invalid
    expr: np.ndarray  # int64 [N]; -1 where invalid
    au: np.ndarray  # int8 [N, 12]; -1 where invalid
    sources: tuple[str, ...] = ()
    line: np.ndarray | None = None  # int64 [N]: 1-based line number in the source file
    n_duplicates: int = 0  # identical duplicate lines merged away
    _slices: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def va_valid(self) -> np.ndarray:
        return (self.va[:, 0] != VA_INVALID) & (self.va[:, 1] != VA_INVALID)

    @property
    def expr_valid(self) -> np.ndarray:
        return self.expr != EXPR_INVALID

    @property
    def au_valid(self) -> np.ndarray:
        return self.au[:, 0] != AU_INVALID

    def valid(self, task: str) -> np.ndarray:
        """Validity mask of `task` ('va', 'expr' or 'au')."""
        return {"va": self.va_valid, "expr": self.expr_valid, "au": self.au_valid}[task]

    def video_of_rows(self) -> np.ndarray:
        """Video id of every row, as an object array."""
        return np.asarray(self.videos, dtype=object)[self.video_idx]

    def images(self) -> list[str]:
        """`video/00001.jpg` names of every row."""
        vids = self.videos
        return [image_name(vids[v], int(f)) for v, f in zip(self.video_idx, self.frame)]

    def video_slice(self, video: str) -> slice:
        """Row range of one video (rows are grouped by video)."""
        if not self._slices:
            bounds = np.searchsorted(self.video_idx, np.arange(len(self.videos) + 1))
            for i, v in enumerate(self.videos):
                self._slices[v] = slice(int(bounds[i]), int(bounds[i + 1]))
        try:
            return self._slices[video]
        except KeyError:
            raise AbawError(f"video {video!r} is not in the annotations") from None

    def select_videos(self, videos: list[str] | tuple[str, ...]) -> Annotations:
        """A new Annotations holding only the given videos (exact id match)."""
        keep = sorted(set(videos))
        missing = [v for v in keep if v not in set(self.videos)]
        if missing:
            raise AbawError(f"videos not in the annotations: {missing[:5]}")
        rows = np.concatenate(
            [np.arange(len(self))[self.video_slice(v)] for v in keep] or [np.zeros(0, int)]
        )
        old_to_new = {self.videos.index(v): i for i, v in enumerate(keep)}
        remap = np.full(len(self.videos), -1, dtype=np.int32)
        for o, n in old_to_new.items():
            remap[o] = n
        return Annotations(
            videos=tuple(keep),
            video_idx=remap[self.video_idx[rows]],
            frame=self.frame[rows],
            va=self.va[rows],
            expr=self.expr[rows],
            au=self.au[rows],
            sources=self.sources,
            line=None if self.line is None else self.line[rows],
            n_duplicates=self.n_duplicates,
        )

    def counts(self) -> dict[str, int]:
        """Rows and valid rows per task."""
        return {
            "rows": len(self),
            "videos": len(self.videos),
            "va": int(self.va_valid.sum()),
            "expr": int(self.expr_valid.sum()),
            "au": int(self.au_valid.sum()),
            "duplicates_merged": self.n_duplicates,
        }

    @staticmethod
    def concat(parts: list[Annotations]) -> Annotations:
        """Merge annotation sets (e.g. train + val); same image twice must agree."""
        videos = tuple(sorted({v for p in parts for v in p.videos}))
        index = {v: i for i, v in enumerate(videos)}
        vid = np.concatenate(
            [np.array([index[v] for v in p.videos], dtype=np.int32)[p.video_idx] for p in parts]
        )
        frame = np.concatenate([p.frame for p in parts])
        va = np.concatenate([p.va for p in parts])
        expr = np.concatenate([p.expr for p in parts])
        au = np.concatenate([p.au for p in parts])
        src = tuple(s for p in parts for s in p.sources)
        order = np.lexsort((frame, vid))
        vid, frame, va, expr, au = vid[order], frame[order], va[order], expr[order], au[order]
        dup, conflict = _duplicates(vid, frame, va, expr, au)
        if len(dup):
            if conflict is not None:
                i = conflict
                raise AbawError(
                    f"image {image_name(videos[vid[i]], int(frame[i]))} appears in "
                    f"{' and '.join(src)} with different labels"
                )
            keep = np.ones(len(frame), bool)
            keep[dup + 1] = False
            vid, frame, va, expr, au = vid[keep], frame[keep], va[keep], expr[keep], au[keep]
        return Annotations(
            videos=videos, video_idx=vid, frame=frame, va=va, expr=expr, au=au, sources=src,
            n_duplicates=sum(p.n_duplicates for p in parts) + len(dup),
        )


_NAMES_RE = re.compile(r"^([^/\\\x00\n]+)/([0-9]+)\.jpg$", re.MULTILINE)


def _split_fast(body: list[tuple[int, str]]) -> tuple[list[str], list[str]]:
    names, nums = [], []
    for _, ln in body:
        name, _, rest = ln.partition(",")
        names.append(name)
        nums.append(rest.rstrip("\r"))
    return names, nums


def _numbers_fast(nums: list[str], n: int) -> np.ndarray | None:
    """All numeric fields as float64 [n, 15], or None if any line is malformed."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns (and stops) at a non-numeric token
        try:
            flat = np.fromstring(",".join(nums), dtype=np.float64, sep=",")
        except ValueError:
            return None
    if flat.size != n * (N_FIELDS - 1) or any(x.count(",") != N_FIELDS - 2 for x in nums):
        return None
    return flat.reshape(n, N_FIELDS - 1)


def _names_fast(names: list[str]) -> tuple[list[str], list[int]] | None:
    """(video per row, frame per row as Python ints: no overflow), or None if any name is
    not `<video>/<frame>.jpg`."""
    found = _NAMES_RE.findall("\n".join(names))
    if len(found) != len(names):
        return None
    videos = [v for v, _ in found]
    for v in set(videos):
        if v in (".", "..") or v != v.strip():
            return None
    return videos, [int(f) for _, f in found]


def _diagnose(path: str, body: list[tuple[int, str]], lineno: np.ndarray) -> None:
    """Find and raise the first malformed line (the slow, precise path)."""
    for n, ln in body:
        f = ln.rstrip("\r").split(",")
        if len(f) != N_FIELDS:
            raise FormatError(path, f"expected {N_FIELDS} comma-separated fields, got {len(f)}", n)
        parsed = parse_image_name(f[0])
        if parsed is None:
            raise FormatError(
                path, f"bad image name {f[0]!r} (expected <video>/<frame>.jpg inside the data root)", n)
        problem = frame_problem(f[0], parsed[1])
        if problem:
            raise FormatError(path, problem, n)
        for k, what in ((1, "valence"), (2, "arousal"), (3, "expression")):
            try:
                float(f[k])
            except ValueError:
                raise FormatError(path, f"{what} {f[k]!r} is not a number", n) from None
        for x in f[4:]:
            try:
                float(x)
            except ValueError:
                raise FormatError(path, f"AU label {x!r} is not a number", n) from None
    raise FormatError(path, "malformed numbers", int(lineno[0]))


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Parse an ABAW MTL annotation file.

    Identical duplicate lines are merged (and counted); duplicates with different labels
    are an error naming both lines. Any malformed line raises `FormatError` with
    `file:line` and the reason.
    """
    path = os.fspath(path)
    text = read_text(path)
    lines = text.splitlines()
    if not lines:
        raise FormatError(path, "empty file (expected a header line)", 1)
    if not lines[0].strip().lower().startswith("image"):
        raise FormatError(path, f"expected a header line starting with 'image', got {lines[0][:60]!r}", 1)

    body = [(i + 2, ln) for i, ln in enumerate(lines[1:]) if ln.strip()]
    if not body:
        return Annotations((), np.zeros(0, np.int32), np.zeros(0, np.int64),
                           np.zeros((0, 2), np.float32), np.zeros(0, np.int64),
                           np.zeros((0, N_AU), np.int8), (path,), np.zeros(0, np.int64), 0)
    lineno = np.fromiter((n for n, _ in body), dtype=np.int64, count=len(body))
    names, nums = _split_fast(body)
    values = _numbers_fast(nums, len(body))
    parsed = _names_fast(names)
    if values is None or parsed is None:
        _diagnose(path, body, lineno)  # raises the precise file:line error
        raise FormatError(path, "malformed file")  # pragma: no cover - _diagnose always raises
    videos_of, frame_list = parsed
    for i, fr in enumerate(frame_list):
        problem = frame_problem(names[i], fr)
        if problem:
            raise FormatError(path, problem, int(lineno[i]))
    frames = np.asarray(frame_list, dtype=np.int64)
    va = values[:, 0:2]
    if not np.isfinite(va).all():
        i = int(np.flatnonzero(~np.isfinite(va).all(1))[0])
        raise FormatError(path, "valence/arousal must be finite", int(lineno[i]))
    inv = va == VA_INVALID
    if (inv[:, 0] != inv[:, 1]).any():
        i = int(np.flatnonzero(inv[:, 0] != inv[:, 1])[0])
        raise FormatError(path, "valence and arousal must be invalid (-5) together", int(lineno[i]))
    out_of_range = ~inv & ((va < -1) | (va > 1))
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range.any(1))[0])
        raise FormatError(path, f"valence/arousal {va[i].tolist()} outside [-1, 1] (and not -5)", int(lineno[i]))
    ints = values[:, 2:]
    frac = ~np.isfinite(ints) | (ints != np.round(ints))
    if frac.any():
        i, j = (int(x) for x in np.argwhere(frac)[0])
        what = "expression" if j == 0 else "AU label"
        raise FormatError(path, f"{what} {ints[i, j]:g} is not an integer", int(lineno[i]))
    bad_e = (ints[:, 0] < EXPR_INVALID) | (ints[:, 0] >= N_EXPR)
    if bad_e.any():
        i = int(np.flatnonzero(bad_e)[0])
        raise FormatError(path, f"expression {ints[i, 0]:g} not in -1..{N_EXPR - 1}", int(lineno[i]))
    expr = ints[:, 0].astype(np.int64)
    bad_a = ((ints[:, 1:] < AU_INVALID) | (ints[:, 1:] > 1)).any(1)
    if bad_a.any():
        i = int(np.flatnonzero(bad_a)[0])
        raise FormatError(path, f"AU labels must be 0, 1 or all -1, got {[f'{x:g}' for x in ints[i, 1:]]}",
                          int(lineno[i]))
    au = ints[:, 1:].astype(np.int64)
    au_inv = au == AU_INVALID
    all_inv = au_inv.all(1)
    mixed = au_inv.any(1) & ~all_inv
    if mixed.any():
        i = int(np.flatnonzero(mixed)[0])
        raise FormatError(path, "AU labels: -1 (invalid) must apply to all 12 AUs at once", int(lineno[i]))

    # exact video ids, sorted
    videos = tuple(sorted(set(videos_of)))
    index = {v: i for i, v in enumerate(videos)}
    vid = np.fromiter((index[v] for v in videos_of), dtype=np.int32, count=len(videos_of))
    order = np.lexsort((lineno, frames, vid))
    vid, frames, va, expr, au, lineno = (
        vid[order], frames[order], va[order], expr[order], au[order], lineno[order]
    )
    dup, conflict = _duplicates(vid, frames, va, expr, au)
    n_dup = 0
    if len(dup):
        if conflict is not None:
            i = conflict
            raise FormatError(
                path,
                f"duplicate image {image_name(videos[vid[i]], int(frames[i]))} with different "
                f"labels on lines {lineno[i]} and {lineno[i + 1]}",
                int(lineno[i + 1]),
            )
        keep = np.ones(len(frames), bool)
        keep[dup + 1] = False
        vid, frames, va, expr, au, lineno = (
            vid[keep], frames[keep], va[keep], expr[keep], au[keep], lineno[keep]
        )
        n_dup = len(dup)

    return Annotations(
        videos=videos,
        video_idx=vid,
        frame=frames,
        va=va.astype(np.float32),
        expr=expr,
        au=au.astype(np.int8),
        sources=(path,),
        line=lineno,
        n_duplicates=n_dup,
    )


def write_annotations(path: str | os.PathLike, images: list[str], va: np.ndarray,
                      expr: np.ndarray, au: np.ndarray) -> None:
    """Write labels in the annotation-file format (atomic). Used by `abaw synth`."""
    from abaw.data.labels import ANNOTATION_HEADER

    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(ANNOTATION_HEADER + "\n")
        for name, (v, a), e, row in zip(images, va, expr, au):
            vs = "-5" if v == VA_INVALID else f"{v:.6g}"
            as_ = "-5" if a == VA_INVALID else f"{a:.6g}"
            f.write(f"{name},{vs},{as_},{int(e)}," + ",".join(str(int(x)) for x in row) + "\n")
