"""Single-frame training data: aligned face JPEGs + labels, augmentations, sharded sampling.

Training items are uint8 [3, S, S] crops after the augmentations (normalised later, on
the device, by `normalize_uint8`); validation items are float [3, S, S] made by the
backbone's own `Preprocess` — exactly what `abaw extract` will feed the checkpoint.

Augmentations draw their randomness from a generator seeded by (seed, epoch, frame), so
a frame gets the same augmentation whatever the number of workers or processes, and a
resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from abaw.data.annotations import Annotations
from abaw.errors import AbawError
from abaw.extract.backbones import Preprocess
from abaw.pipeline.finetune.config import AugmentConfig


def _safe_video_dir(root: Path, video: str) -> Path:
    """`root/video`, refusing ids that could leave the root (already validated by the parser)."""
    bad = (not video or video in (".", "..") or "/" in video or "\\" in video or "\x00" in video
           or os.sep in video or (os.altsep and os.altsep in video) or os.path.isabs(video))
    if bad:
        raise AbawError(f"video id {video!r} cannot be used as a folder under {root}")
    return root / video


def frame_file(video: str, frame: int) -> str:
    return f"{frame:05d}.jpg"


def check_images(root: str | os.PathLike, ann: Annotations, rows: np.ndarray) -> None:
    """Raise a one-line error naming the first annotated image missing under `root`.

    Lists each video folder once (fast even for 170k frames).
    """
    root = Path(root)
    if not root.is_dir():
        raise AbawError(f"{root}: data folder not found (expected cropped_aligned/<video>/<frame>.jpg)")
    src = ann.sources[0] if len(ann.sources) == 1 else " + ".join(ann.sources)
    for v in np.unique(ann.video_idx[rows]):
        video = ann.videos[v]
        d = _safe_video_dir(root, video)
        sel = rows[ann.video_idx[rows] == v]
        try:
            present = set(os.listdir(d))
        except FileNotFoundError:
            present = set()
        for r in sel:
            name = frame_file(video, int(ann.frame[r]))
            if name not in present:
                where = f"{src}:{int(ann.line[r])}" if ann.line is not None and len(ann.sources) == 1 else src
                n_missing = sum(frame_file(video, int(ann.frame[q])) not in present for q in sel)
                raise AbawError(f"{d / name}: image not found (listed in {where}; {n_missing} of "
                                f"{len(sel)} annotated frames of {video} are missing)")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """A JPEG (or any PIL-readable image) as uint8 [H, W, 3] RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise AbawError(f"{path}: image not found") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise AbawError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def train_transform(aug: AugmentConfig, size: int, interpolation: str = "bilinear") -> Callable:
    """uint8 [3, H, W] -> augmented uint8 [3, size, size]."""
    from torchvision.transforms import InterpolationMode, v2

    interp = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    if not aug.enabled:
        return v2.Resize((size, size), interpolation=interp, antialias=True)
    ops: list[Callable] = [v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio,
                                                interpolation=interp, antialias=True)]
    if aug.flip > 0:
        ops.append(v2.RandomHorizontalFlip(aug.flip))
    if aug.rotation > 0:
        ops.append(v2.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR))
    if aug.brightness or aug.contrast or aug.saturation or aug.hue:
        ops.append(v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    return v2.Compose(ops)


def normalize_uint8(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 [B, 3, S, S] (already at the input size) -> normalised float, as `Preprocess` does."""
    x = x.float().div_(255.0)
    if pre.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class FaceImageDataset(Dataset):
    """Annotated frames of one split. Index with `epoch * len(ds) + i` (see EpochSampler)."""

    def __init__(self, root: str | os.PathLike, ann: Annotations, rows: np.ndarray, targets: np.ndarray,
                 pre: Preprocess, *, train: bool, augment: AugmentConfig | None = None, seed: int = 0):
        self.root = Path(root)
        self.videos = ann.videos
        self.video_idx = ann.video_idx[rows]
        self.frame = ann.frame[rows]
        self.targets = np.ascontiguousarray(targets[rows])
        self.pre = pre
        self.train = train
        self.seed = seed
        self.tf = train_transform(augment or AugmentConfig(), pre.input_size, pre.interpolation) if train else None
        for v in np.unique(self.video_idx):
            _safe_video_dir(self.root, self.videos[v])

    def __len__(self) -> int:
        return len(self.frame)

    def path(self, i: int) -> Path:
        video = self.videos[self.video_idx[i]]
        return _safe_video_dir(self.root, video) / frame_file(video, int(self.frame[i]))

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, i = divmod(int(key), len(self))
        img = torch.from_numpy(read_rgb(self.path(i)))
        if self.train:
            s = np.random.SeedSequence([self.seed, epoch, i]).generate_state(2, np.uint32)
            gen = torch.random.default_generator  # the transforms draw from it; restored below
            saved = gen.get_state()
            try:
                gen.manual_seed(int(s[0]) << 31 | int(s[1]))
                x = self.tf(img.permute(2, 0, 1)).contiguous()
            finally:
                gen.set_state(saved)
        else:
            x = self.pre(img[None])[0]
        return x, torch.as_tensor(self.targets[i]), i


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered), sharded keys `epoch * n + i` for one epoch.

    Shuffling depends only on (seed, epoch); rank r of `world` takes every world-th item
    of the permutation (padded by wrapping so all ranks get the same count), like
    DistributedSampler. `samples` > 0 draws that many items per epoch instead of n.
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
                 samples: int = 0, pad: bool = True):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.samples = samples or n
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            reps = -(-self.samples // self.n)
            order = np.concatenate([rng.permutation(self.n) for _ in range(reps)])[: self.samples]
        else:
            order = np.arange(self.n)[: self.samples]
        if self.pad and len(order) % self.world:
            order = np.resize(order, -(-len(order) // self.world) * self.world)
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n if self.shuffle else 0
        return iter((base + self.indices()).tolist())

    def __len__(self) -> int:
        if self.pad:
            return -(-self.samples // self.world)
        return len(range(self.rank, self.samples, self.world))
