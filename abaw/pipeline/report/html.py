"""Reports on runs: per-task tables, per-AU F1, EXPR confusion, VA scatter and traces.

`build_report` takes already-computed validation outputs (one `RunEvaluation` per run),
writes PNGs and one HTML page under the output folder: a table of contents, the scores,
what differs between the runs, the search leaderboards, per-AU / EXPR / VA plots (embedded),
the training curves (copied beside the page) and the provenance (see `sections`).
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from abaw import plots
from abaw.data.labels import AU_NAMES, EXPR_NAMES
from abaw.io import atomic_write, write_json
from abaw.metrics import MTLScore, confusion_matrix, mtl_score
from abaw.pipeline.report.sections import (
    curves_section,
    differs_section,
    esc,
    leaderboard_section,
    provenance_section,
    safe_name,
    show,
    table,
)


@dataclass(frozen=True, eq=False)
class RunEvaluation:
    """One run's per-frame validation outputs aligned with the annotations."""

    name: str
    videos: np.ndarray  # video id per row (object)
    frame: np.ndarray  # int per row
    va_true: np.ndarray  # [N, 2]
    va_valid: np.ndarray  # [N]
    expr_true: np.ndarray  # [N]
    expr_valid: np.ndarray
    au_true: np.ndarray  # [N, 12]
    au_valid: np.ndarray
    va_pred: np.ndarray  # [N, 2]
    expr_pred: np.ndarray  # [N] class
    au_pred: np.ndarray  # [N, 12] 0/1
    info: dict | None = None  # e.g. the run's config summary
    run_dirs: tuple[str, ...] = ()  # the run folders behind it (k folds: several; composed: none)

    def score(self) -> MTLScore:
        return mtl_score(self.va_pred, self.va_true, self.va_valid, self.expr_pred, self.expr_true, self.expr_valid,
                         self.au_pred, self.au_true, self.au_valid)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def build_report(evals: list[RunEvaluation], out: str | os.PathLike, title: str = "abaw report",
                 n_traces: int = 4, searches: Sequence[str | os.PathLike] = (), command: str | None = None) -> Path:
    """Write PNGs, `scores.json` and `report.html` under `out`; return the HTML path.

    `searches`: search folders whose leaderboards the page shows; `command`: the command line
    that made the report (None: "python API").
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not evals:
        from abaw.errors import AbawError

        raise AbawError("report: no runs to report on")
    scores = {e.name: e.score() for e in evals}
    write_json(out / "scores.json", {n: s.to_dict() for n, s in scores.items()})
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)

    rows = [[n, s.va, s.valence, s.arousal, s.expr, s.au, s.total, f"{s.n_va}/{s.n_expr}/{s.n_au}"]
            for n, s in scores.items()]
    body = table(["run", "P_VA", "valence", "arousal", "P_EXPR", "P_AU", "P_MTL", "frames VA/EXPR/AU"], rows,
                 "scores")
    if len(evals) > 1:
        body += _img(plots.score_bars(out / "scores.png", {n: {"va": s.va, "expr": s.expr, "au": s.au,
                                                                "total": s.total} for n, s in scores.items()}))
    sections.append(("scores", "Scores (validation)", body))
    sections.append(("differs", "What differs between the runs", differs_section(evals)))
    for i, sd in enumerate(searches):
        sections.append((f"leaderboard-{i}" if i else "leaderboard", f"Leaderboard: {Path(sd).name}",
                         leaderboard_section(sd)))

    au_scores = {n: list(s.au_per_au) for n, s in scores.items() if s.au_per_au is not None}
    if au_scores:
        p = plots.per_au_bars(out / "au_f1.png", au_scores)
        sections.append(("au-f1", "AU F1 per action unit",
                         _img(p) + table(["run", *AU_NAMES], [[n, *[f"{v:.3f}" for v in vals]]
                                                              for n, vals in au_scores.items()])))
    sections.append(("curves", "Training curves", curves_section(evals, out)))

    for e in evals:
        sections.append((f"run-{safe_name(e.name)}", f"Run: {e.name}", _run_section(e, scores[e.name], out,
                                                                                     n_traces)))
    sections.append(("provenance", "Provenance", provenance_section(evals, command, searches)))

    toc = "<nav id='contents'><h2>Contents</h2><ol>" + "".join(
        f'<li><a href="#{html.escape(a)}">{html.escape(h)}</a></li>' for a, h, _ in sections) + "</ol></nav>"
    content = "".join(f'<section id="{html.escape(a)}"><h2>{html.escape(h)}</h2>{b}</section>'
                      for a, h, b in sections)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;font-size:13px}img{max-width:100%;display:block;margin:1em 0}"
             "pre{background:#f6f6f6;padding:8px;font-size:12px}dt{font-weight:bold;float:left;width:10em}"
             "dd{margin-left:11em}details{margin:1em 0}figcaption{font-size:12px;color:#555}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{toc}{content}</body></html>")
    with atomic_write(out / "report.html", "w", encoding="utf-8") as f:
        f.write(page)
    return out / "report.html"


def _run_section(e: RunEvaluation, s: MTLScore, out: Path, n_traces: int) -> str:
    """One run's summary, score table, EXPR confusion and VA plots."""
    safe = safe_name(e.name)
    parts = []
    if e.info:
        parts.append(table([], [[k, v] for k, v in e.info.items()], "info"))
    parts.append(f"<pre>{html.escape(s.format_table())}</pre>")
    if s.expr is not None:
        m = e.expr_valid
        cm = confusion_matrix(e.expr_true[m], e.expr_pred[m])
        parts.append(_img(plots.confusion(out / f"confusion_{safe}.png", cm, f"EXPR confusion: {e.name}")))
        parts.append("<p>EXPR F1 per class: " + esc({c: v for c, v in zip(EXPR_NAMES, s.expr_per_class or ())})
                     + "</p>")
    if s.va is not None:
        m = e.va_valid
        parts.append(_img(plots.va_scatter(out / f"va_scatter_{safe}.png", e.va_true[m], e.va_pred[m],
                                           s.valence, s.arousal)))
        traces = []
        for v in list(dict.fromkeys(e.videos[m].tolist()))[:n_traces]:
            r = (e.videos == v) & m
            traces.append((show(v), e.frame[r], e.va_true[r], e.va_pred[r]))
        if traces:
            parts.append(_img(plots.va_traces(out / f"va_traces_{safe}.png", traces)))
    return "".join(parts)
