"""Contact sheets: a grid of sample aligned crops per video, so users can check alignment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class PreviewCollector:
    """Keeps an evenly spaced sample of a stream of crops without knowing its length.

    Crops of rows divisible by `stride` are kept; when more than 2*n are held, the stride
    doubles and every other one is dropped. At the end, `n` evenly spaced ones are shown.
    """

    def __init__(self, n: int = 16):
        self.n = n
        self.stride = 1
        self.items: dict[int, tuple[int, np.ndarray]] = {}  # row -> (frame number, crop)

    def wants(self, row: int) -> bool:
        return row % self.stride == 0

    def add(self, row: int, frame: int, crop: np.ndarray) -> None:
        if not self.wants(row):
            return
        self.items[row] = (frame, np.asarray(crop, np.uint8))
        while len(self.items) > 2 * self.n:
            self.stride *= 2
            self.items = {r: v for r, v in self.items.items() if r % self.stride == 0}

    def sample(self) -> list[tuple[int, np.ndarray]]:
        rows = sorted(self.items)
        if len(rows) > self.n:
            pick = np.linspace(0, len(rows) - 1, self.n).round().astype(int)
            rows = [rows[i] for i in pick]
        return [self.items[r] for r in rows]


def contact_sheet(path: str | os.PathLike, title: str, crops: list[tuple[int, np.ndarray]],
                  cols: int = 8) -> Path:
    """Write a PNG grid of (frame number, crop) tiles with a title line; returns its path."""
    from PIL import Image, ImageDraw

    from abaw.io import atomic_write

    path = Path(path)
    tile = max([c.shape[0] for _, c in crops] or [112])
    cols = max(1, min(cols, len(crops) or 1))
    rows = max(1, -(-len(crops) // cols))
    label_h, head_h, pad = 14, 20, 4
    W = cols * (tile + pad) + pad
    H = head_h + rows * (tile + label_h + pad) + pad
    sheet = Image.new("RGB", (W, H), (32, 32, 32))
    d = ImageDraw.Draw(sheet)
    d.text((pad, 4), title if crops else f"{title} (no face found)", fill=(240, 240, 240))
    for i, (frame, crop) in enumerate(crops):
        r, c = divmod(i, cols)
        x = pad + c * (tile + pad)
        y = head_h + r * (tile + label_h + pad)
        im = Image.fromarray(crop)
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.BILINEAR)
        sheet.paste(im, (x, y))
        d.text((x + 2, y + tile + 1), f"#{frame}", fill=(200, 200, 200))
    with atomic_write(path, "wb") as f:
        sheet.save(f, format="PNG")
    return path
