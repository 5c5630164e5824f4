"""`composed.json`: a composed system's file (`abaw search --compose`, `abaw blend`), read by
blend, predict and report. Run folders in it are relative to the file's folder, so a search
folder can be moved. (Its own module: `abaw.pipeline.blend` reads it and the search writes
blends, so neither imports the other for it.)"""

from __future__ import annotations

import os
from pathlib import Path

from abaw.errors import AbawError
from abaw.io import read_json


def run_path(search_dir: str | os.PathLike, run: str) -> Path:
    """A run folder named in leaderboard.json / composed.json (relative to the search folder)."""
    return Path(search_dir) / run


def read_composed(path: str | os.PathLike) -> dict[str, list[Path]]:
    """task -> run folders from a `composed.json` (or a search folder holding one); VA chosen per
    dimension comes as `valence` / `arousal` entries."""
    p = Path(path)
    if p.is_dir():
        p = p / "composed.json"
    if not p.exists():
        raise AbawError(f"{p}: no such file (run abaw search with --compose best-per-task)")
    data = read_json(p)
    try:
        return {t: [run_path(p.parent, r) for r in c["runs"]] for t, c in data["tasks"].items()}
    except (KeyError, TypeError):
        raise AbawError(f"{p}: not a composed.json written by abaw search") from None


__all__ = ["read_composed", "run_path"]
