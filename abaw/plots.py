"""Figures users look at: learning curves, per-frame timelines, per-AU F1, confusion matrices,
VA plots.

All functions write a PNG (matplotlib, Agg backend) atomically and return its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from abaw.data.labels import AU_NAMES, EXPR_NAMES

EXPR_COLOURS = ["#9e9e9e", "#d32f2f", "#689f38", "#7b1fa2", "#fbc02d", "#1976d2", "#00acc1", "#8d6e63"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` to `path` as a PNG, atomically, and close it."""
    from abaw.io import atomic_write

    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path


def learning_curve(path: str | os.PathLike, epochs: Sequence[int], losses: dict[str, Sequence[float | None]],
                   scores: dict[str, Sequence[float | None]], *, best_epoch: int | None = None,
                   best_score: float | None = None, score_label: str = "validation score",
                   step_losses: dict[int, Sequence[float]] | None = None,
                   steps: list[dict[str, Any]] | None = None) -> Path:
    """The learning curve of any trainer: losses per epoch (optionally per-step losses spread
    over each epoch), validation scores per epoch with the best epoch marked, and optionally
    the post-processing steps (`{"step", "total", "va", "expr", "au"}` records) as bars."""
    plt = pyplot()
    ncols = 3 if steps else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    ax = axes[0]
    for ep, sl in (step_losses or {}).items():
        if len(sl):
            ax.plot(ep - 1 + (np.arange(len(sl)) + 1) / len(sl), sl, color="tab:blue", alpha=0.35, lw=1)
    for j, (name, vals) in enumerate(losses.items()):
        pts = [(e, v) for e, v in zip(epochs, vals) if v is not None]
        if pts:
            ax.plot(*zip(*pts), "o-" if j < 2 else ":", alpha=1.0 if j < 2 else 0.6, label=name)
    ax.set(xlabel="epoch", ylabel="loss", title="losses")
    ax.legend(fontsize=7)
    ax = axes[1]
    for j, (name, vals) in enumerate(scores.items()):
        if any(v is not None for v in vals):
            ax.plot(epochs, [np.nan if v is None else v for v in vals], "o-" if j == 0 else ".-", label=name)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls="--", lw=1)
        if best_score is not None:
            ax.annotate(f"best {best_score:.4f}", (best_epoch, best_score), textcoords="offset points",
                        xytext=(5, -12))
    ax.set(xlabel="epoch", ylabel=score_label, title="validation")
    ax.legend(fontsize=7)
    if steps:
        ax = axes[2]
        x = np.arange(len(steps))
        tasks = [t for t in ("va", "expr", "au") if any(s.get(t) is not None for s in steps)]
        wdt = 0.8 / (len(tasks) + 1)
        for j, t in enumerate(tasks + ["total"]):
            bars = ax.bar(x + (j - len(tasks) / 2) * wdt, [s.get(t) or 0.0 for s in steps], wdt,
                          label="P_MTL" if t == "total" else t.upper())
            if t == "total":
                ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks(x, [s["step"] for s in steps])
        ax.set(ylabel="validation score", title="post-processing (fitted on validation)")
        ax.legend(fontsize=7)
    for a in axes[:2]:
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return save_png(fig, path)


def timeline(path: str | os.PathLike, t: np.ndarray, va: np.ndarray | None, expr_prob: np.ndarray | None,
             au_prob: np.ndarray | None, face: np.ndarray, title: str = "", xlabel: str = "time (s)") -> Path:
    """V/A curves, an expression band and an AU heat map over time for one person; a task
    given as None has no panel (at least one must be given). No-face spans are shaded."""
    plt = pyplot()
    t = np.asarray(t, dtype=float)
    face = np.asarray(face, bool)
    panels = [(k, r) for k, a, r in (("va", va, 2.2), ("expr", expr_prob, 0.6), ("au", au_prob, 2.4))
              if a is not None]
    if not panels:
        raise ValueError("timeline: no task to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, max(2.2, 1 + 1.06 * sum(r for _, r in panels))),
                             sharex=True, squeeze=False, gridspec_kw={"height_ratios": [r for _, r in panels]})
    axes = axes[:, 0]
    ax_of = {k: axes[i] for i, (k, _) in enumerate(panels)}
    if title:
        axes[0].set_title(title)
    for axx in axes:  # no-face spans shaded on every panel
        _shade_missing(axx, t, face)
    # cell edges halfway between timestamps: exact for variable-frame-rate videos too
    edges = _edges(t)
    if va is not None:
        ax = ax_of["va"]
        ax.plot(t, np.where(face, va[:, 0], np.nan), color="#1976d2", lw=1.3, label="valence")
        ax.plot(t, np.where(face, va[:, 1], np.nan), color="#e64a19", lw=1.3, label="arousal")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("VA")
        ax.legend(loc="upper right", ncol=2, fontsize=8)
    if expr_prob is not None:
        ax = ax_of["expr"]
        ok = face & np.isfinite(expr_prob).all(1)
        colours = np.array([_hex_rgb(c) for c in EXPR_COLOURS])[np.argmax(np.nan_to_num(expr_prob), axis=1)]
        colours[~ok] = 1.0
        ax.pcolormesh(edges, [0, 1], colours[None], shading="flat")
        ax.set_yticks([])
        ax.set_ylabel("EXPR", rotation=0, ha="right", va="center")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in EXPR_COLOURS]
        below = -0.3 if ax is axes[-1] else -0.15  # under the time axis' label when it is the last panel
        ax.legend(handles, EXPR_NAMES, loc="upper center", bbox_to_anchor=(0.5, below), ncol=8, fontsize=7,
                  frameon=False)
    if au_prob is not None:
        ax = ax_of["au"]
        heat = np.where(face[:, None], au_prob, np.nan).T
        im = ax.pcolormesh(edges, np.arange(len(AU_NAMES) + 1) - 0.5, np.ma.masked_invalid(heat), cmap="magma",
                           vmin=0, vmax=1, shading="flat")
        ax.invert_yaxis()
        ax.set_yticks(range(len(AU_NAMES)))
        ax.set_yticklabels(AU_NAMES, fontsize=7)
        fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, label="AU probability")
    axes[-1].set_xlabel(xlabel)
    return save_png(fig, path)


def _edges(t: np.ndarray) -> np.ndarray:
    """Cell boundaries around each time point (halfway to the neighbours)."""
    if len(t) == 1:
        return np.array([t[0] - 0.5, t[0] + 0.5])
    mid = (t[1:] + t[:-1]) / 2
    return np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])


def _shade_missing(ax, t: np.ndarray, face: np.ndarray) -> None:
    if face.all() or len(t) == 0:
        return
    edges = _edges(t)
    miss = np.flatnonzero(~face)
    starts = miss[np.r_[True, np.diff(miss) > 1]]
    ends = miss[np.r_[np.diff(miss) > 1, True]]
    for s, e in zip(starts, ends):
        ax.axvspan(edges[s], edges[e + 1], color="#eeeeee", zorder=0, lw=0)


def _hex_rgb(h: str) -> tuple[float, float, float]:
    h = h.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def per_au_bars(path: str | os.PathLike, scores: dict[str, Sequence[float]]) -> Path:
    """Per-AU F1 bars, one bar group per AU and one colour per run."""
    plt = pyplot()
    names = list(scores)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    w = 0.8 / max(1, len(names))
    x = np.arange(len(AU_NAMES))
    for i, n in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * w, scores[n], width=w, label=n)
    ax.set_xticks(x)
    ax.set_xticklabels(AU_NAMES)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("AU F1 per action unit")
    if len(names) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def confusion(path: str | os.PathLike, cm: np.ndarray, title: str = "EXPR confusion (rows: truth)") -> Path:
    """Row-normalised confusion matrix with counts."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(EXPR_NAMES)))
    ax.set_xticklabels(EXPR_NAMES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(EXPR_NAMES)))
    ax.set_yticklabels(EXPR_NAMES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, path)


def va_scatter(path: str | os.PathLike, true_va: np.ndarray, pred_va: np.ndarray, ccc_v: float | None = None,
               ccc_a: float | None = None) -> Path:
    """Predicted vs true valence and arousal (hexbin density)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    fig.subplots_adjust(wspace=0.35)
    for j, (ax, name, c) in enumerate(zip(axes, ["valence", "arousal"], [ccc_v, ccc_a])):
        if len(true_va):
            ax.hexbin(true_va[:, j], pred_va[:, j], gridsize=30, extent=(-1, 1, -1, 1), cmap="viridis", mincnt=1)
        ax.plot([-1, 1], [-1, 1], "w--", lw=0.8)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(name + (f"  CCC {c:.3f}" if c is not None else ""))
        ax.set_aspect("equal")
    return save_png(fig, path)


def va_traces(path: str | os.PathLike, traces: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Path:
    """Per-video VA traces: (video, frames, true [N,2], pred [N,2]) for a few videos."""
    plt = pyplot()
    n = max(1, len(traces))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.1 * n), squeeze=False)
    for ax, (vid, fr, tv, pv) in zip(axes[:, 0], traces):
        ax.plot(fr, tv[:, 0], color="#1976d2", lw=1, label="valence (true)")
        ax.plot(fr, pv[:, 0], color="#1976d2", lw=1, ls="--", label="valence (pred)")
        ax.plot(fr, tv[:, 1], color="#e64a19", lw=1, label="arousal (true)")
        ax.plot(fr, pv[:, 1], color="#e64a19", lw=1, ls="--", label="arousal (pred)")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(vid, fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    return save_png(fig, path)


def score_bars(path: str | os.PathLike, rows: dict[str, dict[str, float | None]]) -> Path:
    """Per-task scores (VA, EXPR, AU, P_MTL) side by side for several runs."""
    plt = pyplot()
    tasks = ["va", "expr", "au", "total"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) + 0.4 * len(names)), 3.6))
    w = 0.8 / max(1, len(names))
    x = np.arange(len(tasks))
    for i, n in enumerate(names):
        vals = [rows[n].get(t) or 0.0 for t in tasks]
        ax.bar(x + (i - (len(names) - 1) / 2) * w, vals, width=w, label=n)
    ax.set_xticks(x)
    ax.set_xticklabels(["P_VA", "P_EXPR", "P_AU", "P_MTL"])
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("validation scores")
    ax.legend(fontsize=8)
    return save_png(fig, path)
