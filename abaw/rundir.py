"""Run folders: what each kind of run writes, clearing them, config comparison, training state.

Both trainers (`train-heads`, `finetune`) keep their resumable state in one folder whose
files are listed in a `RunLayout`; the state is saved atomically and read back with
`torch.load(weights_only=True)` (plain tensors and JSON types only).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abaw.claims import CLAIM_FILE
from abaw.errors import AbawError
from abaw.io import atomic_write


@dataclass(frozen=True)
class RunLayout:
    """The files one kind of run writes into its folder."""

    kind: str
    config: str  # the config file: its presence marks a run folder of this kind
    files: tuple[str, ...]  # every file the run writes (config included)

    def holds_run(self, out: str | os.PathLike) -> bool:
        """Whether `out` holds at least one file of this kind of run."""
        out = Path(out)
        return out.is_dir() and any((out / name).exists() for name in self.files)

    def clear(self, out: str | os.PathLike) -> None:
        """Remove this run's files from `out` (other files are left alone)."""
        for name in self.files:
            with contextlib.suppress(FileNotFoundError):
                (Path(out) / name).unlink()


HEADS_RUN = RunLayout("train-heads run", "config.json", (
    "config.json", "data.json", "metrics.json", "best.pt", "last.pt", "val_outputs.npz", "postprocess.json",
    "curves.png", "result.json"))
FINETUNE_RUN = RunLayout("fine-tuning run", "finetune_config.json", (
    "finetune_config.json", "state.pt", "history.json", "learning_curve.png", "backbone.json",
    "backbone.safetensors", "head.safetensors"))


def is_empty(out: str | os.PathLike) -> bool:
    """True for a folder that does not exist or holds nothing (but a worker's claim on it,
    see abaw/claims.py)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AbawError(f"{out}: exists and is not a folder; choose another --out")
    return not out.exists() or not any(not p.name.startswith(CLAIM_FILE) for p in out.iterdir())


def config_diff(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """`key: saved (run) vs given (now)` for each recorded setting that differs."""
    keys = list(saved) + [k for k in given if k not in saved]
    return [f"{k}: {saved.get(k)!r} (run) vs {given.get(k)!r} (now)" for k in keys if saved.get(k) != given.get(k)]


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically `torch.save` a training state (tensors and JSON types only)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_state(path: str | os.PathLike, version: int | None = None, hint: str = "use --overwrite to start again"
               ) -> dict[str, Any]:
    """A state written by `save_state`, read with `weights_only=True`; AbawError naming the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise AbawError(f"{path}: cannot read the training state ({str(e).splitlines()[0][:160]}); {hint}") from None
    if not isinstance(state, dict) or (version is not None and state.get("version") != version):
        raise AbawError(f"{path}: not an abaw training state (version {version}); {hint}")
    return state
