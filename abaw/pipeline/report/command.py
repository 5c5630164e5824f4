"""`report(...)`: evaluate runs / search folders on validation and write the HTML report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abaw.data.annotations import Annotations
from abaw.pipeline.blend_members import HONEST_KEYS
from abaw.pipeline.report.evaluate import evaluations_from_paths
from abaw.pipeline.report.html import build_report
from abaw.results import Result


@dataclass(frozen=True)
class ReportResult(Result):
    """The report page and each evaluated system's validation score summary."""

    page: str
    scores: tuple[tuple[str, dict[str, Any]], ...]  # (name, MTLScore.summary())
    notes: tuple[tuple[str, dict[str, str]], ...] = ()  # (name, {label: line}): a blend's honest estimate

    def format(self) -> str:
        def r(x: float | None) -> float | None:
            return x if x is None else round(x, 4)

        from abaw.pipeline.train.run import va_name

        lines = []
        for name, s in self.scores:
            lines.append(f"{name:<28} P_MTL {s['total']:.4f}  ({va_name(s)} {r(s['va'])}, EXPR {r(s['expr'])}, "
                         f"AU {r(s['au'])})")
            lines += [f"{'':<28} {k}: {v}" for k, v in dict(self.notes).get(name, {}).items()]
        return "\n".join(lines + [f"report: {self.page}"])


def report(paths: list[str], out: str | os.PathLike, val_ann: Annotations | None = None, top: int = 5,
           title: str = "abaw report", command: str | None = None) -> ReportResult:
    """Report on run folders and search folders (their `top` configs and composed system, and
    their leaderboards); `command`: the command line shown as provenance (None: "python API")."""
    evals = evaluations_from_paths(list(paths), val_ann, top)
    searches = [p for p in paths if (Path(p) / "leaderboard.json").exists()]
    page = build_report(evals, out, title, searches=searches, command=command)
    notes = tuple((e.name, {k: (e.info or {})[k] for k in HONEST_KEYS if k in (e.info or {})}) for e in evals)
    return ReportResult(page=str(page), scores=tuple((e.name, e.score().summary()) for e in evals),
                        notes=tuple(n for n in notes if n[1]))
