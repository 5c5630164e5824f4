"""Training settings files: `abaw train-heads --config FILE` and `--write-default-config FILE`.

FILE is YAML or JSON (read with `yaml.safe_load`: no tags that build objects): a mapping
of `TrainConfig` settings by their flat names (`TrainConfig.flat_names()`: model fields
such as `temporal` next to `lr`), e.g.

    tasks: [va, expr, au]        # or "va,expr,au"
    fusion: ffm
    temporal: lstm
    task_windows: [30, 5, 1]     # va, expr, au
    lr: 1.0e-4

A search-space file (`base:` / `grid:` / `random:`, `abaw.pipeline.search.space`) is
accepted too: its `base` section and the first value of each `grid` entry are the
config, so one recipe file serves both `abaw search --space` (the whole space) and
`abaw train-heads --config` (its first grid point; `random` is not used). Precedence: the command's defaults < the file < flags given
explicitly on the command line. Unknown keys and values of the wrong type are errors
naming the file and the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from abaw.data.labels import TASKS
from abaw.errors import FormatError
from abaw.io import atomic_write, read_text
from abaw.pipeline.train.config import TrainConfig

LIST_FIELDS = ("backbones", "tasks", "init_from")  # may be written as "a,b,c"
SPACE_SECTIONS = ("base", "grid", "random")


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key (and of the keys under `base:` / `grid:`), for error messages."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines.setdefault(str(k.value), k.start_mark.line + 1)
            if k.value in ("base", "grid") and isinstance(v, yaml.MappingNode):
                for kk, _ in v.value:
                    lines[str(kk.value)] = kk.start_mark.line + 1
    return lines


def _type_error(name: str, value: Any, default: Any) -> str | None:
    """Why `value` does not fit the setting whose default is `default` (None if it fits)."""
    if value is None:
        return None if default is None or name in ("stride", "max_gap") else "must not be null"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int) or name in ("stride", "max_gap"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list) or (name in LIST_FIELDS and isinstance(value, str))
    else:
        ok = True
    return None if ok else f"expected {type(default).__name__ if default is not None else 'int'}, " \
                           f"got {type(value).__name__} {value!r}"


def read_settings(path: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The flat settings in a config (or search-space) file, checked; plus notes for the user."""
    from abaw.safeload import load_yaml

    path = Path(path)
    text = read_text(path)
    data = load_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FormatError(path, "expected a mapping of training settings (name: value)")
    lines = _key_lines(text)
    notes: list[str] = []
    if set(data) & set(SPACE_SECTIONS):
        other = sorted(set(data) - set(SPACE_SECTIONS))
        if other:
            raise FormatError(path, f"mixes search-space sections with settings {other}", lines.get(other[0]))
        base, grid = data.get("base") or {}, data.get("grid") or {}
        for section, value in (("base", base), ("grid", grid)):
            if not isinstance(value, dict):
                raise FormatError(path, f"{section}: expected a mapping of training settings", lines.get(section))
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise FormatError(path, f"grid.{k} must be a non-empty list", lines.get(k))
        if grid or data.get("random"):
            notes.append(f"{path}: a search space; training its base settings"
                         + (f" with the first grid value of {', '.join(grid)}" if grid else "")
                         + " (`abaw search --space` runs the whole space)")
        data = {**base, **{k: v[0] for k, v in grid.items()}}
    defaults = TrainConfig().flat()
    out: dict[str, Any] = {}
    for name, value in data.items():
        name = str(name).replace("-", "_")
        if name not in defaults:
            raise FormatError(path, f"unknown setting {name!r} (see `abaw train-heads --write-default-config`)",
                              lines.get(name))
        why = _type_error(name, value, defaults[name])
        if why:
            raise FormatError(path, f"{name}: {why}", lines.get(name))
        if name in LIST_FIELDS and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if name == "tasks" and value == ["all"]:
            value = list(TASKS)
        out[name] = value
    return out, notes


def resolve(defaults: dict[str, Any], file_settings: dict[str, Any], explicit: dict[str, Any],
            where: str = "--config") -> TrainConfig:
    """The config of: `defaults` (flat) < `file_settings` < `explicit` (flags given on the command line)."""
    merged = {**defaults, **file_settings, **explicit}
    try:
        return TrainConfig.from_dict(merged).validate()
    except (TypeError, ValueError) as e:
        raise FormatError(where, str(e)) from None


def write_settings(path: str | os.PathLike, cfg: TrainConfig) -> Path:
    """Write `cfg`'s recorded settings as a YAML file that `--config` reads back to `cfg`."""
    import yaml

    path = Path(path)
    body = yaml.safe_dump(cfg.recorded(), sort_keys=False, default_flow_style=None)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("# abaw train-heads settings: edit, then `abaw train-heads --config "
                f"{path.name} --cache ... --data ... --out ...`\n# flags given on the command line override "
                "these values\n" + body)
    return path
