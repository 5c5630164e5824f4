"""A system of trained runs as a crop system: the runs' backbones encode the aligned crops,
the runs' heads (fusion, temporal module, task heads, fitted post-processing) decode each
person's frames. Used for exported systems and for `--run/--compose` with `--face all`.

The features are rounded to float16 exactly as the feature cache stores them, so a person's
outputs equal those of `abaw extract` + `abaw predict` on the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abaw.data.labels import TASKS
from abaw.pipeline.predict.zeroshot import Track


@dataclass
class RunsSystem:
    """`system`: a `System` of runs; `synthetic`: trained on synthetic data; `info`: the manifest."""

    system: Any
    device: str = "cpu"
    name: str = "runs"
    synthetic: bool = False
    crop_size: int = 112
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from abaw.pipeline.predict.system import system_backbones

        self.backbones = system_backbones(self.system)
        for bb in self.backbones:
            bb.model.to(self.device).eval()
        self.tasks = self.system.tasks
        self.au_thresholds = self.system.au_thresholds()
        self._fingerprints = {bb.key: bb.fingerprint() for bb in self.backbones}

    @property
    def notes(self) -> tuple[str, ...]:
        missing = [t.upper() for t in TASKS if t not in self.tasks]
        return (f"note: this system does not predict {', '.join(missing)}; those columns are empty",) if missing else ()

    def describe(self) -> str:
        return f"{self.name} ({self.system.describe()})"

    def encode(self, crops) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = crops.to(self.device)
            parts = [bb(x).reshape(len(x), -1).float().cpu().numpy().astype(np.float16) for bb in self.backbones]
        return np.concatenate(parts, 1).astype(np.float32)

    def decode(self, track: Track) -> dict[str, np.ndarray]:
        from abaw.cache.store import FeatureTable
        from abaw.pipeline.predict.system import system_outputs

        feats, lo = {}, 0
        for bb in self.backbones:
            feats[bb.key] = track.codes[:, lo:lo + bb.dim].astype(np.float16)
            lo += bb.dim
        n = len(track.frame)
        table = FeatureTable(keys=tuple(feats), videos=("input",), video_idx=np.zeros(n, np.int32),
                             frame=track.frame.astype(np.int32), face=np.ones(n, bool),
                             timestamp=track.timestamp.astype(np.float64), feats=feats,
                             fingerprints=self._fingerprints)
        outs, _, _ = system_outputs(self.system, table, "each")
        pos = {int(f): i for i, f in enumerate(outs.frame)}
        rows = np.asarray([pos[int(f)] for f in track.frame], np.int64)
        return {t: np.asarray(getattr(outs, t), np.float64)[rows] for t in self.tasks}
