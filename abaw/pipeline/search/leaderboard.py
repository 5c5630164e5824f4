"""The leaderboard of `abaw search`: rows per config, ranking, composition, nested estimates.

Each config's row holds three validation scores, means over its runs (folds):

- `val`: the run's post-processed validation score (optimistic: the epoch, smoothing and
  AU thresholds were chosen on the frames scored);
- `honest`: the run's cross-fitted estimate (`abaw.pipeline.train.honest`: epoch and
  post-processing fitted on other validation videos than those scored);
- `val_raw`: the best epoch's raw decisions.

Rows are ranked by `honest` where every config has it, else by `val`. (A config that trains
one VA dimension, `tasks: au,v`, has a partial P_MTL: its P_VA is that dimension's CCC.) Choosing the best
of many configs on the same frames is itself optimistic; with `--folds K >= 3` the search
also reports a *nested* estimate: for each fold, the config (or, composed, the config per
task) is chosen on the other folds' honest scores and scored on that fold's.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from abaw.data.labels import TASKS, VA_DIMS
from abaw.errors import AbawError
from abaw.io import atomic_write, write_json

SCORE_KEYS = (*TASKS, "total", *VA_DIMS)


def scores_of(results: list[dict[str, Any]], step: str) -> dict[str, float | None] | None:
    """Mean per-task scores of `step` (val_final, val_raw, honest) over the runs; None if a run lacks it."""
    recs = [r["result"].get(step) for r in results]
    if any(not rec for rec in recs):
        return None
    out: dict[str, float | None] = {}
    for t in SCORE_KEYS:
        vals = [rec.get(t) for rec in recs]
        out[t] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def make_row(cid: str, overrides: dict[str, Any], tasks: tuple[str, ...], results: list[dict[str, Any]],
             runs: list[str]) -> dict[str, Any]:
    """The leaderboard row of one config from its runs' results (one per split)."""
    row: dict[str, Any] = {"config": cid, "overrides": overrides, "tasks": ",".join(tasks), "runs": runs}
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        row["error"] = errors[0]
        return row
    row["val"] = scores_of(results, "val_final")
    row["val_raw"] = scores_of(results, "val_raw")
    honest = scores_of(results, "honest")
    if honest is not None:
        row["honest"] = honest
        row["honest_folds"] = [{t: r["result"]["honest"].get(t) for t in SCORE_KEYS} for r in results]
    row["seconds"] = float(sum(r.get("seconds", 0.0) for r in results))
    return row


def rank_key(rows: list[dict[str, Any]]) -> str:
    """'honest' when every finished row has an honest score, else 'val'."""
    ok = [r for r in rows if "val" in r]
    return "honest" if ok and all("honest" in r for r in ok) else "val"


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows best first (failed ones last), with `rank` set."""
    key = rank_key(rows)
    rows = sorted(rows, key=lambda r: (-r[key]["total"]) if "val" in r else np.inf)
    for i, r in enumerate(rows, 1):
        r["rank"] = i if "val" in r else None
    return rows


def nested_estimate(rows: list[dict[str, Any]], folds: int | None = None) -> dict[str, Any] | None:
    """With K >= 3 folds: pick the config on K-1 folds' honest scores, score it on the K-th.

    Returns the mean over folds for the single best config (`best`) and for the
    best-per-task composition (`composed`), with the configs each fold chose. `folds`: use
    the first K runs of each row only (repeated K-fold: the first partition, whose folds are disjoint).
    """
    ok = [dict(r, honest_folds=r["honest_folds"][:folds] if folds else r["honest_folds"])
          for r in rows if "honest_folds" in r]
    if not ok or len(ok[0]["honest_folds"]) < 3 or any(len(r["honest_folds"]) != len(ok[0]["honest_folds"]) for r in ok):
        return None
    k = len(ok[0]["honest_folds"])

    def others(r: dict[str, Any], i: int, t: str) -> float:
        vals = [f[t] for j, f in enumerate(r["honest_folds"]) if j != i]
        return -np.inf if any(v is None for v in vals) else float(np.mean(vals))

    best, composed, picks = [], [], []
    for i in range(k):
        chosen = max(ok, key=lambda r: others(r, i, "total"))
        best.append(chosen["honest_folds"][i]["total"])
        total, pick = 0.0, {"best": chosen["config"]}
        for t, part in _parts(ok, lambda r, t: r["honest_folds"][i].get(t) is not None):
            cands = [r for r in ok if r["honest_folds"][i].get(t) is not None]
            if cands:
                c = max(cands, key=lambda r: others(r, i, t))
                total += part * c["honest_folds"][i][t]
                pick[t] = c["config"]
        composed.append(total)
        picks.append(pick)
    return {"folds": k, "best": float(np.mean(best)), "composed": float(np.mean(composed)), "picks": picks}


def _parts(rows: list[dict[str, Any]], scored) -> list[tuple[str, float]]:
    """What a composition chooses and its share of P_MTL: EXPR and AU whole (1); VA per dimension
    (`valence`, `arousal`: 1/2 each, or 1 for the only one any row scored), or whole when no row
    scored a dimension (results written before V/A were scored apart). `scored(row, key)`."""
    dims = [d for d in VA_DIMS if any(scored(r, d) for r in rows)]
    va = [(d, 1.0 / len(dims)) for d in dims] or [("va", 1.0)]
    return [p for t in TASKS for p in (va if t == "va" else [(t, 1.0)])]


def compose_best_per_task(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For each task the config (and its run folders) with the best score on it (honest if every row has one).

    VA is chosen per dimension: valence from the config best on valence, arousal from the one
    best on arousal (configs that train one dimension only, `tasks: au,v`, compete on it). When
    one config wins both, the entry is `va` as before; else `valence` and `arousal` entries, each
    worth half of P_VA. A dimension no config trained is left out and listed in `partial`.
    """
    key = rank_key(rows)
    done = [r for r in rows if "val" in r]
    chosen: dict[str, Any] = {}
    share: dict[str, float] = {}
    for t, part in _parts(done, lambda r, t: r[key].get(t) is not None):
        cands = [r for r in done if r[key].get(t) is not None]
        if not cands:
            continue
        best = max(cands, key=lambda r: r[key][t])
        chosen[t] = {"config": best["config"], "score": best["val"][t], "runs": best["runs"]}
        if "honest" in best:
            chosen[t]["honest"] = best["honest"][t]
        share[t] = part
    if set(VA_DIMS) <= set(chosen) and chosen["valence"]["config"] == chosen["arousal"]["config"]:
        best = next(r for r in done if r["config"] == chosen["valence"]["config"])
        entry = {"config": best["config"], "score": best["val"]["va"], "runs": best["runs"]}
        if "honest" in best:
            entry["honest"] = best["honest"]["va"]
        chosen = {("va" if t == "valence" else t): (entry if t == "valence" else c)
                  for t, c in chosen.items() if t != "arousal"}
        share = {("va" if t == "valence" else t): (1.0 if t == "valence" else p)
                 for t, p in share.items() if t != "arousal"}
    if not chosen:
        raise AbawError("compose: no finished config scored any task")
    out = {"mode": "best-per-task", "chosen_by": key, "tasks": chosen,
           "total": float(sum(share[t] * c["score"] for t, c in chosen.items()))}
    if all("honest" in c for c in chosen.values()):
        out["honest"] = float(sum(share[t] * c["honest"] for t, c in chosen.items()))
    if any(d in chosen for d in VA_DIMS) and not set(VA_DIMS) <= set(chosen):
        out["partial"] = [d for d in VA_DIMS if d not in chosen]  # no config trained it: predicted as NaN
    return out


def fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def describe(overrides: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(show(x) for x in v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={show(v)}" for k, v in sorted(overrides.items()) if k not in ("tasks",))


def write_leaderboard(out: Path, rows: list[dict[str, Any]]) -> None:
    write_json(out / "leaderboard.json", rows)
    cols = ["rank", "config", "tasks", "P_VA", "P_EXPR", "P_AU", "P_MTL", "P_MTL_honest", "P_MTL_raw", "seconds",
            "settings", "error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        v, raw, h = r.get("val") or {}, r.get("val_raw") or {}, r.get("honest") or {}
        w.writerow([r["rank"] or "", r["config"], r["tasks"], fmt(v.get("va")), fmt(v.get("expr")),
                    fmt(v.get("au")), fmt(v.get("total")), fmt(h.get("total")), fmt(raw.get("total")),
                    f"{r['seconds']:.1f}" if "seconds" in r else "", describe(r["overrides"]), r.get("error", "")])
    with atomic_write(out / "leaderboard.csv", "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    ok = [r for r in rows if "val" in r]
    if ok:
        from abaw.plots import score_bars

        score_bars(out / "leaderboard.png", {f"#{r['rank']} {r['config']}": r["val"] for r in ok[:8]})


def format_leaderboard(rows: list[dict[str, Any]], top: int | None = None) -> str:
    """The leaderboard as a fixed-width table: per-task validation scores after post-processing,
    P_MTL, the honest estimate and the raw score. The settings column shows only what differs
    between configs (the rest is in search.json)."""
    varying = varying_keys(rows)
    lines = [f"{'#':>3} {'config':<10} {'tasks':<11} {'P_VA':>7} {'P_EXPR':>7} {'P_AU':>7} {'P_MTL':>7} "
             f"{'honest':>7} {'raw':>7}  settings"]
    for r in rows[:top]:
        shown = describe({k: v for k, v in r["overrides"].items() if k in varying})
        if "val" not in r:
            lines.append(f"{'-':>3} {r['config']:<10} {r['tasks']:<11} failed: {r['error']}")
            continue
        v, raw, h = r["val"], r["val_raw"], r.get("honest") or {}
        lines.append(f"{r['rank']:>3} {r['config']:<10} {r['tasks']:<11} {fmt(v['va']):>7} {fmt(v['expr']):>7} "
                     f"{fmt(v['au']):>7} {fmt(v['total']):>7} {fmt(h.get('total')):>7} {fmt(raw['total']):>7}  {shown}")
    lines.append(f"(ranked by {'the honest estimate' if rank_key(rows) == 'honest' else 'P_MTL'}; P_MTL: "
                 "post-processing fitted and scored on validation; honest: epoch and post-processing fitted on "
                 "other validation videos)")
    if any(set(r["tasks"].split(",")) & {"v", "a"} for r in rows[:top]):
        lines.append("(tasks v / a: one VA dimension trained; P_VA is its CCC and P_MTL is partial — "
                     "--compose best-per-task takes valence and arousal from the configs best on each)")
    return "\n".join(lines)


def varying_keys(rows: list[dict[str, Any]]) -> set[str]:
    keys = {k for r in rows for k in r["overrides"]}
    return {k for k in keys if len({json.dumps(r["overrides"].get(k), sort_keys=True) for r in rows}) > 1}
