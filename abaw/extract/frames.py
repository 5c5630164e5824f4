"""Aligned frame folders (`cropped_aligned/<video>/<00001>.jpg`): listing and parallel reading.

Frame numbers come from the file names (`00042.jpg` -> 42); gaps are kept. Images are
decoded by DataLoader worker processes in batches; a file that cannot be decoded is
returned as a blank crop with `ok=False` (recorded as "no face"), never dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abaw.data.labels import MAX_FRAME
from abaw.errors import AbawError
from abaw.runtime import loader_context

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


@dataclass(frozen=True)
class FrameFolder:
    """One video's aligned frames: sorted frame numbers and their files."""

    video: str
    path: str
    frame: np.ndarray  # int32 [N], strictly increasing
    files: tuple[str, ...]  # file names relative to `path`
    nbytes: int

    def __len__(self) -> int:
        return len(self.files)


def is_frame_folder(path: Path) -> bool:
    """A directory holding image files directly."""
    try:
        return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir() if p.is_file())
    except OSError:
        return False


def list_frames(folder: str | os.PathLike, video: str | None = None,
                only: set[int] | None = None) -> FrameFolder:
    """List a frame folder. `only` keeps just those frame numbers (others are ignored)."""
    folder = Path(folder)
    nums: list[int] = []
    names: list[str] = []
    size = 0
    with os.scandir(folder) as it:
        for e in it:
            if not e.is_file():
                continue
            stem, ext = os.path.splitext(e.name)
            if ext.lower() not in IMAGE_EXTS:
                continue
            if not stem.isdigit():
                raise AbawError(f"{folder / e.name}: frame images must be named by their frame number "
                                "(e.g. 00001.jpg)")
            n = int(stem)
            if n < 1:
                raise AbawError(f"{folder / e.name}: frame numbers start at 1")
            if n > MAX_FRAME:  # refused, not wrapped (4294967297.jpg is no second frame 1)
                raise AbawError(f"{folder / e.name}: frame number {n} is out of range (max {MAX_FRAME})")
            if only is not None and n not in only:
                continue
            nums.append(n)
            names.append(e.name)
            size += e.stat().st_size
    order = np.argsort(np.asarray(nums, np.int64), kind="stable")
    frame = np.asarray(nums, np.int32)[order]
    if len(frame) > 1 and (np.diff(frame) == 0).any():
        dup = int(frame[np.flatnonzero(np.diff(frame) == 0)[0]])
        raise AbawError(f"{folder}: frame {dup} appears twice (e.g. as .jpg and .png)")
    return FrameFolder(video=video or folder.name, path=str(folder), frame=frame,
                       files=tuple(names[i] for i in order), nbytes=size)


def read_image(path: str, size: int) -> tuple[np.ndarray, bool]:
    """RGB uint8 [size, size, 3] of one image (resized if needed); (blank, False) if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # lets libjpeg decode big files at reduced size
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR, reducing_gap=None)
            return np.asarray(im), True
    except Exception:  # noqa: BLE001 - any decoding failure marks the frame unreadable
        return np.zeros((size, size, 3), np.uint8), False


class FrameDataset(torch.utils.data.Dataset):
    """Rows of several frame folders, in order: (folder index, row, image, ok)."""

    def __init__(self, folders: list[FrameFolder], rows: list[np.ndarray] | None, size: int):
        self.size = size
        self.paths: list[str] = []
        owner: list[np.ndarray] = []
        row: list[np.ndarray] = []
        for i, f in enumerate(folders):
            r = np.arange(len(f)) if rows is None or rows[i] is None else np.asarray(rows[i])
            self.paths.extend(os.path.join(f.path, f.files[j]) for j in r)
            owner.append(np.full(len(r), i, np.int64))
            row.append(r.astype(np.int64))
        self.owner = np.concatenate(owner) if owner else np.zeros(0, np.int64)
        self.row = np.concatenate(row) if row else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img, ok = read_image(self.paths[i], self.size)
        return int(self.owner[i]), int(self.row[i]), torch.from_numpy(img.copy()), ok


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def frame_loader(ds: FrameDataset, batch_size: int, workers: int, pin_memory: bool = False):
    """A DataLoader over `ds` keeping order; batches are (owner, row, images [B,S,S,3], ok)."""
    kw = {}
    if workers > 0:
        kw = {"worker_init_fn": _worker_init, "prefetch_factor": 4, "persistent_workers": False,
              "multiprocessing_context": loader_context()}
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=pin_memory, drop_last=False, **kw)
