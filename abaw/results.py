"""The base of every entry point's result: a frozen dataclass with `to_dict()` and `format()`.

Library calls (`train`, `run_search`, `predict_test_list`, `finetune`, `report`, ...) return
one; the CLI only echoes `result.format()` (and `result.warnings` on stderr) and writes
`result.to_dict()` where asked. `result["key"]` reads a field (older dict-style callers).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Result:
    """Base class; subclasses are frozen dataclasses and implement `format()`."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def format(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def warnings(self) -> tuple[str, ...]:
        """Lines the CLI prints on stderr after `format()` (none by default)."""
        return ()

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def _plain(v: Any) -> Any:
    if isinstance(v, Result):
        return v.to_dict()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def fmt_score(x: float | None) -> str:
    """A score with 4 decimals, `  n/a ` for a task that was not scored."""
    return "  n/a " if x is None else f"{x:.4f}"
