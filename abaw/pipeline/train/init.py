"""Starting points of a heads run: parameters from earlier runs, feature statistics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abaw.errors import AbawError
from abaw.heads.model import ModelSpec, n_snapshots
from abaw.pipeline.train.run import load_checkpoint


def init_from_runs(model: nn.Module, spec: ModelSpec, runs: tuple[str, ...]) -> dict[str, Any]:
    """Copy matching parameters from finished runs' best checkpoints (progressive learning).

    Projections are matched by backbone key, task heads by task (only from runs that
    trained that task), fusion/temporal parameters by name; shapes must agree. Runs are
    used in the given order: the first run providing a parameter wins.
    """
    target = model.state_dict()
    assigned: dict[str, str] = {}
    report: dict[str, Any] = {"runs": [], "skipped_shape": []}
    for rd in runs:
        p = Path(rd)
        if not (p / "result.json").exists():
            raise AbawError(f"--init-from {rd}: not a finished run directory")
        src, sd, _ = load_checkpoint(p / "best.pt")
        src, sd = plain_state(src, sd)
        key_map = {i: spec.keys.index(k) for i, k in enumerate(src.keys) if k in spec.keys}
        n = 0
        for name, t in sd.items():
            parts = name.split(".")
            if parts[0] == "proj":
                i = int(parts[1])
                if i not in key_map:
                    continue
                name = ".".join(["proj", str(key_map[i])] + parts[2:])
            elif parts[0] == "heads" and parts[1] not in src.tasks:
                continue
            if name not in target or name in assigned:
                continue
            if target[name].shape != t.shape:
                report["skipped_shape"].append(f"{rd}:{name}")
                continue
            target[name] = t
            assigned[name] = str(rd)
            n += 1
        report["runs"].append({"run": str(rd), "tasks": list(src.tasks), "backbones": list(src.keys),
                               "parameters": n})
        if n == 0:
            raise AbawError(f"--init-from {rd}: no parameter matches this model "
                            "(different backbones, d_model or architecture?)")
    model.load_state_dict(target)
    report["fresh"] = sorted(k for k in target if k not in assigned)
    report["loaded"] = len(assigned)
    return report


def plain_state(spec: ModelSpec, sd: dict[str, torch.Tensor]) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The state of one plain model from a checkpoint that may hold per-task copies
    (`TaskSnapshots`): each task head from its own copy, the rest from the copy most tasks use."""
    if n_snapshots(spec) == 1:
        return spec, sd
    copy_of = spec.task_copies()
    counts = [list(copy_of.values()).count(i) for i in range(n_snapshots(spec))]
    main = int(np.argmax(counts))
    out: dict[str, torch.Tensor] = {}
    for name, v in sd.items():
        _, i, rest = name.split(".", 2)
        parts = rest.split(".")
        wanted = copy_of[parts[1]] if parts[0] == "heads" else main
        if int(i) == wanted:
            out[rest] = v
    return replace(spec, snapshots=(0, 0, 0)), out


def feature_stats(feats: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (float64 accumulation) of `feats[rows]`, in chunks."""
    s = np.zeros(feats.shape[1])
    s2 = np.zeros(feats.shape[1])
    for i in range(0, len(rows), chunk):
        x = feats[rows[i:i + chunk]].astype(np.float64)
        s += x.sum(0)
        s2 += np.square(x).sum(0)
    n = max(len(rows), 1)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0))
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
