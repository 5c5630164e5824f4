"""The report page's sections read from run and search folders: what differs between the
compared runs, the leaderboard, training curves and provenance.

Every value on the page goes through `show` (one formatter: numbers with 4 decimals, lists
joined, dicts as key=value, None as an en dash) and every text through `html.escape`, so no
Python repr reaches the page.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import math
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from abaw.io import read_json
from abaw.pipeline.blend_members import honest_info

DASH = "\u2013"


def show(x: Any, _nested: bool = False) -> str:
    """The page's one formatter for a value."""
    if x is None:
        return DASH
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return str(x)
        return f"{x:.4g}" if x != 0 and abs(x) < 1e-3 else f"{x:.4f}"
    if isinstance(x, str):
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        if not x:
            return DASH
        text = ", ".join(f"{k}={show(v, True)}" for k, v in x.items())
    elif isinstance(x, (list, tuple, set, np.ndarray)):
        items = x.tolist() if isinstance(x, np.ndarray) else list(x)
        if not items:
            return DASH
        text = ", ".join(show(v, True) for v in items)
    else:
        return str(x)
    return f"({text})" if _nested else text


def esc(x: Any) -> str:
    """`show(x)`, HTML-escaped."""
    return html.escape(show(x))


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """An HTML table; every cell through `esc`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    head = f"<tr>{head}</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}>{head}{body}</table>"


# ---------------------------------------------------------------- run folders

def _read(path: Path) -> Any:
    """A JSON side file ({} when absent; a damaged one is a one-line AbawError naming it)."""
    return read_json(path) if path.exists() else {}


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json (the TrainConfig under "config", versions beside it)."""
    return _read(Path(run_dir) / "config.json")


def flat_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict with nested configs flattened: leaf names, `parent.name` on a clash."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if not isinstance(v, dict):
            out[k] = v
    for k, v in cfg.items():
        if isinstance(v, dict):
            for sk, sv in flat_settings(v).items():
                out[sk if sk not in out and sk not in cfg else f"{k}.{sk}"] = sv
    return out


def _data_settings(run_dir: str | Path) -> dict[str, Any]:
    """The data a run used, as settings (annotation content hashes, cache)."""
    data = _read(Path(run_dir) / "data.json")
    ann = data.get("identity", {}).get("annotations", {})
    out = {f"data.{s}_annotations": (ann[s].get("sha256") or "")[:12] or None for s in ("train", "val") if s in ann}
    if "store" in data.get("sources", {}):
        out["data.cache"] = data["sources"]["store"]
    return out


def run_settings(run_dir: str | Path) -> dict[str, Any]:
    return {**flat_settings(run_config(run_dir).get("config", {})), **_data_settings(run_dir)}


def differs_section(evals: list[Any]) -> str:
    """Settings whose values differ between the compared runs; the common ones collapsed."""
    runs = [(e.name, run_settings(e.run_dirs[0])) for e in evals if e.run_dirs]
    runs = [(n, s) for n, s in runs if s]
    parts: list[str] = []
    if not runs:
        parts.append("<p>No run folder with a config.json among the compared systems.</p>")
    else:
        keys = list(dict.fromkeys(k for _, s in runs for k in s))
        shown = {k: [show(s.get(k)) for _, s in runs] for k in keys}
        differ = [k for k in keys if len(set(shown[k])) > 1]
        common = [k for k in keys if k not in differ]
        if len(runs) == 1:
            parts.append(f"<p>One run folder ({html.escape(runs[0][0])}); its settings are below.</p>")
        elif differ:
            parts.append(table(["setting", *[n for n, _ in runs]], [[k, *shown[k]] for k in differ], "settings"))
        else:
            parts.append("<p>The compared runs have the same settings (they differ by seed or data split only"
                         " if at all).</p>")
        if common:
            parts.append(f"<details><summary>Common settings ({len(common)})</summary>"
                         + table(["setting", "value"], [[k, shown[k][0]] for k in common]) + "</details>")
    for e in evals:
        if not e.run_dirs and e.info:
            parts.append(f"<p>{html.escape(e.name)}: {esc(e.info)}</p>")
        elif len(e.run_dirs) > 1:
            parts.append(f"<p>{html.escape(e.name)}: {len(e.run_dirs)} folds, scored out of fold together.</p>")
    return "".join(parts)


# ---------------------------------------------------------------- search folders

SCORE_COLS = ("va", "expr", "au", "total")


def _score(row: dict[str, Any], key: str, task: str) -> Any:
    return (row.get(key) or {}).get(task)


def leaderboard_section(search_dir: str | Path) -> str:
    """A search folder's leaderboard (every config, its varying settings, val / honest / raw scores)."""
    search_dir = Path(search_dir)
    rows = _read(search_dir / "leaderboard.json") if (search_dir / "leaderboard.json").exists() else []
    rows = rows if isinstance(rows, list) else []
    over = [r.get("overrides") or {} for r in rows]
    keys = [k for k in dict.fromkeys(k for o in over for k in o) if k != "tasks"]  # tasks: its own column

    def varies(k: str) -> bool:  # differs between the configs that set it, or set by few (a baseline's)
        values = [show(o[k]) for o in over if k in o]
        return len(set(values)) > 1 or len(values) <= len(over) / 2

    varying = [k for k in keys if varies(k)]
    body = []
    for r, o in zip(rows, over):
        body.append([r.get("rank"), r.get("config"), r.get("tasks"), {k: o[k] for k in varying if k in o},
                     *[_score(r, "val", t) for t in SCORE_COLS], _score(r, "honest", "total"),
                     _score(r, "val_raw", "total"), r.get("error")])
    parts = [f"<p>Search folder {esc(str(search_dir))}: {len(rows)} configs. P_* and P_MTL: validation after"
             " post-processing fitted on validation (optimistic); honest: P_MTL with post-processing fitted out"
             " of fold; raw: P_MTL without post-processing.</p>",
             table(["rank", "config", "tasks", "settings", "P_VA", "P_EXPR", "P_AU", "P_MTL", "honest", "raw",
                    "error"], body, "leaderboard")]
    comp = _read(search_dir / "composed.json")
    if comp.get("tasks"):
        chosen = {t: c.get("config") for t, c in comp["tasks"].items()}
        honest = honest_info(comp.get("scores") or {})
        parts.append(f"<p>Composed ({esc(comp.get('mode'))}, chosen by {esc(comp.get('chosen_by'))}): "
                     f"{esc(chosen)}; P_MTL {esc(comp.get('total'))}, honest "
                     f"{esc(honest.get('honest', comp.get('honest')))}.</p>")
        if "extrapolated" in honest:
            parts.append(f"<p>{esc(honest['extrapolated'])} (README: Folds).</p>")
    return "".join(parts)


# ---------------------------------------------------------------- curves

def curves_section(evals: list[Any], out: Path) -> str:
    """Each run's curves.png, copied into the report folder and linked relatively."""
    parts, seen = [], set()
    for e in evals:
        for i, d in enumerate(e.run_dirs):
            src = Path(d) / "curves.png"
            if d in seen or not src.exists():
                continue
            seen.add(d)
            label = e.name + (f" fold {i}" if len(e.run_dirs) > 1 else "")
            name = f"curves_{safe_name(label)}.png"
            shutil.copyfile(src, out / name)
            parts.append(f'<figure><img src="{html.escape(name)}" alt="training curves {html.escape(label)}">'
                         f"<figcaption>{html.escape(label)} ({esc(str(d))})</figcaption></figure>")
    return "".join(parts) or "<p>No training curves (no run folder with curves.png).</p>"


# ---------------------------------------------------------------- provenance

def _data_rows(run_dir: str | Path) -> list[list[Any]]:
    data = _read(Path(run_dir) / "data.json")
    src, ann = data.get("sources", {}), data.get("identity", {}).get("annotations", {})
    rows = []
    for split in ("train", "val"):
        ident = ann.get(split, {})
        paths = src.get(f"{split}_ann") or ident.get("files") or []
        sha = ident.get("file_sha256") or []
        for j, p in enumerate(paths or ([None] if ident else [])):  # labels built in memory: no file
            rows.append([split, p, sha[j] if j < len(sha) else None, ident.get("rows"), ident.get("sha256")])
    if "store" in src:
        rows.append(["cache", src["store"], None, None, None])
    return rows


def provenance_section(evals: list[Any], command: str | None, searches: Iterable[str | Path] = ()) -> str:
    """abaw version, date, the command line and the data (annotation files and their sha256, cache)."""
    from abaw import __version__

    dirs = list(dict.fromkeys(d for e in evals for d in e.run_dirs))
    torch = sorted({show(run_config(d).get("torch_version")) for d in dirs} - {DASH})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    info = [["abaw version", __version__], ["date", date], ["command", command or "python API"],
            ["torch (runs)", torch or None], ["search folders", [str(s) for s in searches] or None]]
    parts = ["<dl class='provenance'>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{esc(v)}</dd>" for k, v in info)
             + "</dl>"]
    groups: dict[str, tuple[list[list[Any]], list[str]]] = {}
    for e in evals:
        for d in e.run_dirs[:1]:
            rows = _data_rows(d)
            key = repr(rows)  # grouping key only, never shown
            groups.setdefault(key, (rows, []))[1].append(e.name)
    for rows, names in groups.values():
        if rows:
            parts.append(f"<p>Data of {esc(names if len(groups) > 1 else 'every run')}:</p>"
                         + table(["split", "file", "file sha256", "rows", "labels sha256"], rows, "data"))
    if not any(rows for rows, _ in groups.values()):
        parts.append("<p>No data.json in the reported runs.</p>")
    return "".join(parts)
