"""Search spaces for `abaw search`: parsing, grid and random sampling, stable config ids.

A space file (YAML or JSON) has up to three parts; keys are training-config fields:

    base:                      # fixed for every config
      epochs: 30
    grid:                      # every combination (cartesian product)
      tasks: [[au], [expr], [va], [au, expr, va]]
      temporal: [none, transformer]
    random:                    # one draw per config
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      window: {choice: [16, 32, 64]}
      dropout: {uniform: [0.0, 0.3]}
      d_model: {int: [64, 256]}

With `--budget N` smaller than the grid, N grid points are drawn without replacement.
Without a grid, N configs are drawn from the random part. Everything is deterministic
for a seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abaw.errors import AbawError, FormatError
from abaw.io import read_text

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class SearchSpace:
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def keys(self) -> set[str]:
        return set(self.base) | set(self.grid) | set(self.random)

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else 1


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read a YAML or JSON search-space file."""
    path = Path(path)
    text = read_text(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - yaml and json raise different types
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        line = (line + 1) if line is not None else getattr(e, "lineno", None)
        raise FormatError(path, f"cannot parse: {str(e).splitlines()[0]}", line) from None
    return space_from_dict(data or {}, str(path))


def space_from_dict(data: dict[str, Any], where: str = "search space") -> SearchSpace:
    if not isinstance(data, dict):
        raise AbawError(f"{where}: expected a mapping with base/grid/random")
    unknown = set(data) - {"base", "grid", "random"}
    if unknown:
        raise AbawError(f"{where}: unknown sections {sorted(unknown)} (expected base, grid, random)")
    base = dict(data.get("base") or {})
    grid = dict(data.get("grid") or {})
    rnd = dict(data.get("random") or {})
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise AbawError(f"{where}: grid.{k} must be a non-empty list")
    for k, v in rnd.items():
        if isinstance(v, list):
            rnd[k] = v = {"choice": v}
        if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in DISTRIBUTIONS:
            raise AbawError(f"{where}: random.{k} must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
        kind, arg = next(iter(v.items()))
        if kind != "choice" and (not isinstance(arg, list) or len(arg) != 2 or not arg[0] <= arg[1]):
            raise AbawError(f"{where}: random.{k}.{kind} needs [low, high] with low <= high")
        if kind == "loguniform" and arg[0] <= 0:
            raise AbawError(f"{where}: random.{k}.loguniform needs positive bounds")
    overlap = (set(base) & set(grid)) | (set(base) & set(rnd)) | (set(grid) & set(rnd))
    if overlap:
        raise AbawError(f"{where}: keys in more than one section: {sorted(overlap)}")
    return SearchSpace(base, grid, rnd)


def _draw(rng: np.random.Generator, spec: dict[str, list[Any]]) -> Any:
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return arg[int(rng.integers(len(arg)))]
    if kind == "uniform":
        return float(rng.uniform(arg[0], arg[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
    return int(rng.integers(int(arg[0]), int(arg[1]) + 1))


def sample_configs(space: SearchSpace, budget: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Configs (dicts of overrides) to run, in a deterministic order."""
    rng = np.random.default_rng(seed)
    keys = list(space.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(space.grid[k] for k in keys))] \
        if keys else [{}]
    if budget is not None and budget < 1:
        raise AbawError("--budget must be at least 1")
    if keys:
        if budget is not None and budget < len(points):
            pick = sorted(rng.choice(len(points), size=budget, replace=False).tolist())
            points = [points[i] for i in pick]
    elif space.random:
        points = [{} for _ in range(budget or 1)]
    out = []
    for p in points:
        cfg = {**space.base, **p}
        for k in sorted(space.random):
            cfg[k] = _draw(rng, space.random[k])
        out.append(cfg)
    return out


def config_id(cfg: dict[str, Any]) -> str:
    """A short stable id for a config dict (same overrides -> same id -> same run folder)."""
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
