"""Reports on runs: per-task tables, per-AU F1, EXPR confusion, VA scatter and traces.

`build_report` takes already-computed validation outputs (one `RunEvaluation` per run),
writes PNGs and one self-contained HTML page (images embedded) under the output folder.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw import plots
from abaw.data.labels import AU_NAMES, EXPR_NAMES
from abaw.io import atomic_write, write_json
from abaw.metrics import MTLScore, confusion_matrix, mtl_score


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

    def score(self) -> MTLScore:
        return mtl_score(self.va_pred, self.va_true, self.va_valid, self.expr_pred, self.expr_true, self.expr_valid,
                         self.au_pred, self.au_true, self.au_valid)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def build_report(evals: list[RunEvaluation], out: str | os.PathLike, title: str = "abaw report",
                 n_traces: int = 4) -> Path:
    """Write PNGs, `scores.json` and `report.html` under `out`; return the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not evals:
        from abaw.errors import AbawError

        raise AbawError("report: no runs to report on")
    scores = {e.name: e.score() for e in evals}
    write_json(out / "scores.json", {n: s.to_dict() for n, s in scores.items()})
    parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    # per-task table
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(s.va)}</td><td>{_fmt(s.valence)}</td><td>{_fmt(s.arousal)}</td>"
        f"<td>{_fmt(s.expr)}</td><td>{_fmt(s.au)}</td><td><b>{s.total:.4f}</b></td>"
        f"<td>{s.n_va}/{s.n_expr}/{s.n_au}</td></tr>"
        for n, s in scores.items())
    parts.append("<h2>Scores (validation)</h2><table><tr><th>run</th><th>P_VA</th><th>valence</th><th>arousal</th>"
                 f"<th>P_EXPR</th><th>P_AU</th><th>P_MTL</th><th>frames VA/EXPR/AU</th></tr>{rows}</table>")
    if len(evals) > 1:
        p = plots.score_bars(out / "scores.png", {n: {"va": s.va, "expr": s.expr, "au": s.au, "total": s.total}
                                                   for n, s in scores.items()})
        parts.append(_img(p))

    # per-AU F1
    au_scores = {n: list(s.au_per_au) for n, s in scores.items() if s.au_per_au is not None}
    if au_scores:
        p = plots.per_au_bars(out / "au_f1.png", au_scores)
        tbl = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{v:.3f}</td>" for v in vals) + "</tr>"
                      for n, vals in au_scores.items())
        parts.append("<h2>AU F1 per action unit</h2>" + _img(p) + "<table><tr><th>run</th>"
                     + "".join(f"<th>{a}</th>" for a in AU_NAMES) + f"</tr>{tbl}</table>")

    for e in evals:
        s = scores[e.name]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in e.name)
        parts.append(f"<h2>Run: {html.escape(e.name)}</h2>")
        if e.info:
            parts.append("<pre>" + html.escape("\n".join(f"{k}: {v}" for k, v in e.info.items())) + "</pre>")
        parts.append(f"<pre>{html.escape(s.format_table())}</pre>")
        if s.expr is not None:
            m = e.expr_valid
            cm = confusion_matrix(e.expr_true[m], e.expr_pred[m])
            parts.append(_img(plots.confusion(out / f"confusion_{safe}.png", cm, f"EXPR confusion: {e.name}")))
            parts.append("<p>EXPR F1 per class: " + ", ".join(
                f"{c} {v:.3f}" for c, v in zip(EXPR_NAMES, s.expr_per_class or ())) + "</p>")
        if s.va is not None:
            m = e.va_valid
            parts.append(_img(plots.va_scatter(out / f"va_scatter_{safe}.png", e.va_true[m], e.va_pred[m],
                                               s.valence, s.arousal)))
            traces = []
            vids = [v for v in dict.fromkeys(e.videos[m].tolist())][:n_traces]
            for v in vids:
                r = (e.videos == v) & m
                traces.append((str(v), e.frame[r], e.va_true[r], e.va_pred[r]))
            if traces:
                parts.append(_img(plots.va_traces(out / f"va_traces_{safe}.png", traces)))

    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;font-size:13px}img{max-width:100%;display:block;margin:1em 0}"
             "pre{background:#f6f6f6;padding:8px;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    with atomic_write(out / "report.html", "w", encoding="utf-8") as f:
        f.write(page)
    return out / "report.html"
