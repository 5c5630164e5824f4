"""The one object an extraction run passes around: settings, device, backbones and their
fingerprints, the store, the process group, and (while it runs) timer, forwarder and sink."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from abaw.cache.store import FeatureStore
from abaw.errors import AbawError
from abaw.extract.backbones import Backbone, create_backbone
from abaw.extract.config import ExtractConfig, Timer
from abaw.extract.forward import Forwarder
from abaw.extract.sink import Sink
from abaw.runtime import DistEnv, resolve_device, resolve_precision


@dataclass
class RunContext:
    """Everything one extraction run shares: its settings, where it runs, the backbones and
    their fingerprints, the store, and (while it runs) the timer, forwarder and sink."""

    cfg: ExtractConfig
    env: DistEnv
    device: torch.device
    precision: str
    backbones: list[Backbone]
    fingerprints: dict[str, dict]  # per cache key, through JSON as stored (tuples become lists)
    crop: int  # side of the aligned crops
    progress: bool = True
    background_writes: bool | None = None  # None: in a background thread on GPU, inline on CPU
    grouped: bool = False  # the ranks meet in a process group
    fs: FeatureStore | None = None
    timer: Timer = field(default_factory=Timer)
    sink: Sink | None = None
    fwd: Forwarder | None = None

    @classmethod
    def create(cls, backbones: Sequence[str | Backbone], cfg: ExtractConfig, env: DistEnv, progress: bool,
               background_writes: bool | None) -> RunContext:
        device = resolve_device(cfg.device, env.local_rank)
        precision = resolve_precision(cfg.precision, device)
        bbs: list[Backbone] = []
        for b in backbones:
            bb = create_backbone(b, device) if isinstance(b, str) else b
            bb.model.to(device)
            if device.type == "cuda":
                bb.model.to(memory_format=torch.channels_last)
            bbs.append(bb)
        keys = [b.key for b in bbs]
        if len(set(keys)) != len(keys):
            raise AbawError(f"two backbones share a cache key ({keys}); give one a key= option")
        fps = {b.key: json.loads(json.dumps(b.fingerprint())) for b in bbs}
        crop = cfg.crop_size or max(b.preprocess.input_size for b in bbs)
        return cls(cfg, env, device, precision, bbs, fps, crop, progress, background_writes)

    def meet(self) -> None:
        """Wait for every rank (when they share a process group)."""
        if self.grouped:
            import datetime

            import torch.distributed as dist

            dist.monitored_barrier(timeout=datetime.timedelta(minutes=30))

    def open_store(self, store: str | os.PathLike | FeatureStore) -> FeatureStore:
        if isinstance(store, FeatureStore):
            self.fs = store
        elif not self.grouped:
            self.fs = FeatureStore(store, "a")
        else:
            fs = FeatureStore(store, "a") if self.env.main else None  # rank 0 creates it, the others wait
            self.meet()
            self.fs = fs or FeatureStore(store, "a")
        return self.fs

    def clear_staging(self) -> None:
        """Stale staging of an interrupted run goes once, before any rank writes."""
        if self.grouped:
            if self.env.main:
                self.fs.clear_staging()
            self.meet()
        elif self.env.world == 1:
            self.fs.clear_staging()
