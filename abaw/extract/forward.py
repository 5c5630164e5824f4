"""The forward pass of `abaw extract`: every backbone on fixed-size batches of crops
gathered across videos.

Batches always have exactly `batch` rows (the last one is zero-padded), so on CPU a
frame's features do not depend on which other frames shared its batch: an interrupted
run, resumed, gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

from abaw.errors import AbawError
from abaw.extract.backbones import Backbone
from abaw.extract.config import Timer
from abaw.extract.sink import Sink
from abaw.runtime import autocast


class Forwarder:
    """Runs every backbone on fixed-size batches of crops gathered across videos."""

    def __init__(self, bbs: list[Backbone], batch: int, device: torch.device, precision: str, sink: Sink,
                 timer: Timer):
        self.bbs = bbs
        self.batch = batch
        self.device = device
        self.precision = precision
        self.sink = sink
        self.timer = timer
        self.pending: list[tuple[torch.Tensor, str, np.ndarray]] = []
        self.n = 0

    def push(self, crops: torch.Tensor, owner: str, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.pending.append((crops, owner, np.asarray(rows, np.int64)))
        self.n += len(rows)
        while self.n >= self.batch:
            self._run(self.batch)

    def flush(self) -> None:
        while self.n > 0:
            self._run(min(self.n, self.batch))

    def _run(self, n: int) -> None:
        take: list[tuple[torch.Tensor, str, np.ndarray]] = []
        need = n
        while need > 0:
            c, o, r = self.pending[0]
            if len(r) <= need:
                take.append(self.pending.pop(0))
                need -= len(r)
            else:
                take.append((c[:need], o, r[:need]))
                self.pending[0] = (c[need:], o, r[need:])
                need = 0
        self.n -= n
        with self.timer("forward"):
            x = torch.cat([c.to(self.device, non_blocking=True) for c, _, _ in take])
            if n < self.batch:  # fixed batch shape: a frame's result never depends on its batch
                x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
            keys = self.sink.needed_keys(o for _, o, _ in take)
            feats: dict[str, np.ndarray] = {}
            for b in self.bbs:
                if b.key not in keys:
                    continue
                with autocast(self.device, self.precision):
                    y = b(x)
                y = y.reshape(len(y), -1)[:n]
                if y.shape[1] != b.dim:
                    raise AbawError(f"backbone {b.spec}: produced {y.shape[1]}-d features, declared {b.dim}")
                feats[b.key] = y.float().cpu().numpy().astype(np.float16)
        i = 0
        for c, o, r in take:
            self.sink.add(o, r, {k: v[i:i + len(r)] for k, v in feats.items()})
            i += len(r)
