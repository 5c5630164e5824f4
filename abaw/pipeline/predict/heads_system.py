"""A system of trained runs as a crop system: the runs' backbones encode the aligned crops,
the runs' heads (fusion, temporal module, task heads, fitted post-processing) decode each
person's frames. Used for exported systems (`--system`) and for `--run/--compose --video`.

The features are rounded to float16 exactly as the feature cache stores them, so a person's
outputs equal those of `abaw extract` + `abaw predict` on the same crops. Each person's
frames are predicted at the runs' training time scale (`Run.predict`,
abaw.pipeline.train.timescale); `time_scale(track)` says how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abaw.data.labels import TASKS
from abaw.errors import AbawError
from abaw.pipeline.predict.zeroshot import Track


def system_backbones(system: Any) -> list[Any]:
    """Rebuild the backbones the runs were trained on, refusing any whose weights differ."""
    from abaw.extract.backbones import create_backbone, same_features

    bbs = []
    for key, fp in sorted(system.fingerprints().items()):
        spec = fp.get("spec")
        if not spec:
            raise AbawError(f"the runs do not record how backbone {key!r} was made (no spec in its fingerprint)")
        bb = create_backbone(spec)
        bb.key = key
        if fp.get("weights_sha256") and not same_features(fp, bb.fingerprint()):
            raise AbawError(f"backbone {spec!r} cannot be rebuilt as the runs saw it (different weights or "
                            "preprocessing); extract the frames with the original weights yourself (abaw extract) "
                            "and predict from that cache (--cache with --test-list)")
        bbs.append(bb)
    missing = [k for k in system.keys() if k not in {b.key for b in bbs}]
    if missing:
        raise AbawError(f"the runs do not record the backbones {missing}")
    return bbs


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
        self.backbones = system_backbones(self.system)
        for bb in self.backbones:
            bb.model.to(self.device).eval()
        self.tasks = self.system.tasks
        self.au_thresholds = self.system.au_thresholds()
        self._fingerprints = {bb.key: bb.fingerprint() for bb in self.backbones}

    @classmethod
    def of_runs(cls, system: Any, device: str = "cpu") -> RunsSystem:
        """The crop system of loaded runs (`load_system`); synthetic when any run was trained
        on `abaw synth` data."""
        return cls(system, device=device, synthetic=any(r.training_data()["synthetic"] for r in system.all_runs()),
                   info={"runs": {t: [str(r.path) for r in system.runs[t]] for t in system.tasks}})

    @property
    def notes(self) -> tuple[str, ...]:
        missing = [t.upper() for t in TASKS if t not in self.tasks] + self.system.missing_va_dims()
        return (f"note: this system does not predict {', '.join(missing)}; those columns are empty",) if missing else ()

    def describe(self) -> str:
        return f"{self.name} ({self.system.describe()})"

    def encode(self, crops) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = crops.to(self.device)
            parts = [bb(x).reshape(len(x), -1).float().cpu().numpy().astype(np.float16) for bb in self.backbones]
        return np.concatenate(parts, 1).astype(np.float32)

    def _table(self, track: Track):
        from abaw.cache.store import FeatureTable

        feats, lo = {}, 0
        for bb in self.backbones:
            feats[bb.key] = track.codes[:, lo:lo + bb.dim].astype(np.float16)
            lo += bb.dim
        n = len(track.frame)
        return FeatureTable(keys=tuple(feats), videos=("input",), video_idx=np.zeros(n, np.int32),
                            frame=track.frame.astype(np.int32), face=np.ones(n, bool),
                            timestamp=track.timestamp.astype(np.float64), feats=feats,
                            fingerprints=self._fingerprints)

    def decode(self, track: Track) -> dict[str, np.ndarray]:
        from abaw.pipeline.predict.system import system_outputs

        outs, _, _ = system_outputs(self.system, self._table(track), "each")
        pos = {int(f): i for i, f in enumerate(outs.frame)}
        rows = np.asarray([pos[int(f)] for f in track.frame], np.int64)
        return {t: np.asarray(getattr(outs, t), np.float64)[rows] for t in self.tasks}

    def time_scale(self, track: Track) -> dict[str, dict[str, Any]]:
        """Per run: how `decode` lays its temporal windows over this person's frames (TimeScale)."""
        table = self._table(track)
        return {str(r.path): r.time_scale(table).to_dict() for r in self.system.all_runs()}
