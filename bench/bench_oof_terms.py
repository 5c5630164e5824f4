"""Where a repeated k-fold search's 1-model term comes from (a benchmark, no assertion).

    python bench/bench_oof_terms.py bench/out/work/dense/small-4-test600/runs/search-kf2st-s4

`bench_ensemble_gain.py` splits the extrapolated estimate's error into a 1-model term and a gain
term. This script splits the 1-model term — the out-of-fold score of the blend's 1-model views as
the search computes it, minus the mean test score of one fold run alone with the blend's weights
and post-processing — into three parts that add up to it exactly. "Raw" scores nothing fitted
across runs: the members averaged with equal weights, no smoothing, AU at 0.5.

- `set size`: the delivered blend's test score (one fold run per member, the blend's weights and
  post-processing) on random sets of as many test tracks as the out-of-fold pool has, minus on
  all of them: the metric scores smaller sets lower (EXPR's macro F1 over eight classes most),
  whatever the estimator;
- `pool`: the out-of-fold raw score of the views of the honest outputs (every row at the epoch
  chosen on the other honest folds of its run's validation tracks, as the estimate scores them),
  minus the test sets of the pool's size: how the pool's tracks score against as many fresh ones
  (split noise, plus any cost of choosing epochs on fewer tracks or of leaving a fold out);
- `fitting`: what the blend's weights and post-processing add out-of-fold, cross-fitted (fitted
  on the other folds of the pool, as the estimate does), minus what the blend's own (fitted on the
  whole pool) add on the pool-sized sets of test tracks. It splits in two: `fit size`, what the
  cross-fit's own fold fits (weights and post-processing fitted on the other folds of the pool, one
  per fold and view) add on the same test sets minus what the blend's own add there (fitting on
  the whole pool rather than on its other folds), and `held-out`, the rest: what the same fold
  fits add on their held-out folds out-of-fold minus what they add on fresh test tracks.

Also printed: what the same weights and post-processing add out-of-fold when fitted on the whole
pool and scored on it (in-sample, an upper bound), and the best-epoch outputs' raw score (their
epoch chosen on the scored tracks: in-sample too).
Per task and total, per search folder, and the mean over folders; `--plot PNG` draws the total's
terms per folder as stacked bars (README: Accuracy against strong baselines).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEYS = ("va", "expr", "au", "total")
TERMS = ("set size", "pool", "fitting")
FITTING = ("fit size", "held-out")  # the fitting term's two parts


def _members(search: Path, doc: dict):
    """The blend's members as the search built them: (name, runs, tasks), in the blend's order."""
    from abaw.pipeline.blend import Member

    order: dict[str, tuple[tuple[Path, ...], list[str]]] = {}
    for t, e in doc["tasks"].items():
        for m in e["members"]:
            runs, tasks = order.setdefault(m["source"], (tuple(search / r for r in m["runs"]), []))
            tasks.append(t)
    return [Member(name, runs, tuple(tasks)) for name, (runs, tasks) in order.items()]


def _views(members, cf, honest: bool):
    """The blend's data with the repeated k-fold views of the honest (or best-epoch) outputs."""
    from abaw.pipeline.blend import blend_data

    return blend_data(members, None, cf, with_views=True, honest_views=honest)


def _pick(sc: dict) -> dict[str, float]:
    return {k: float(sc.get(k) or 0.0) for k in KEYS}


def _mean(dicts: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in dicts])) for k in KEYS}


def terms(search: Path, test_videos: int | None, subsets: int, seed: int) -> dict:
    import bench_accuracy as ba
    from abaw.data.labels import TASKS, clip_ids
    from abaw.pipeline.blend import BlendConfig, evaluate_blend, fold_series
    from abaw.pipeline.crossfit import CrossfitConfig, apply_postfit, crossfit_folds, make_series, score_values
    from abaw.pipeline.train.honest import assign_folds, crossfit_config
    from abaw.pipeline.train.outputs import align_annotations, combine
    from abaw.pipeline.train.run import load_run, read_config

    doc = json.loads((search / "composed.json").read_text())
    if doc.get("mode") != "blend" or not (doc["scores"].get("ensemble") or {}).get("models"):
        raise SystemExit(f"{search}: not a repeated k-fold blend (search --repeats >= 2 --compose blend)")
    cfg = BlendConfig(**{f.name: doc["config"][f.name] for f in fields(BlendConfig) if f.name in doc["config"]})
    members = _members(search, doc)
    cf = crossfit_config(read_config(members[0].runs[0]))
    hon = _views(members, cf, honest=True)
    best = _views(members, cf, honest=False)
    fit = evaluate_blend(hon, cfg)  # the search's own fit: weights, post-processing, fold weights
    w, space = fit.weights, cfg.space
    base = hon.base()
    fold = assign_folds(hon.clips(), cfg.folds)
    raw = CrossfitConfig(smoothing=False)

    equal = {t: tuple([1.0 / len(ns)] * len(ns)) for t, ns in hon.names.items()}

    def raw_score(data) -> dict[str, float]:
        s = make_series(data.blended(equal, space), data.labels, raw, data.rows)
        return _pick(score_values({t: s.outputs[t] for t in s.tasks}, s, None))

    oof_tool, oof_raw_hon, oof_raw_best, oof_pp_in = [], [], [], []
    fold_fits: list[tuple[int, object]] = []  # (fold, its PostFit) of every view's cross-fit
    for vh, vb in zip(hon.repeat_views(), best.repeat_views()):
        values, thr, fits = crossfit_folds(fold, fold_series(vh, fit.fold_weights, space), hon.cfg)
        fold_fits += sorted(fits.items())
        oof_tool.append(_pick(score_values(values, base, thr)))
        oof_raw_hon.append(raw_score(vh))
        oof_raw_best.append(raw_score(vb))
        s = vh.series(w, space)
        oof_pp_in.append(_pick(score_values(apply_postfit(s, fit.postfit), s, fit.postfit.au_thresholds)))
    # the blend's weights refitted here must be the search's own
    for t, e in doc["tasks"].items():
        got = [float(np.sum(x)) for x in fit.weights[t]]
        kept = [float(np.sum(m["weight"])) for m in e["members"]]
        if not np.allclose(got, kept, atol=1e-6):
            print(f"note: {search}: {t.upper()} weights refitted {got}, composed.json {kept}")
    n_pool = len(np.unique(hon.clips()))

    work = search.parents[1]
    table, _, splits = ba.load_splits(work if test_videos is None else ba.test_folder(work, test_videos))
    te = splits["test"]
    n_runs = len(members[0].runs)
    rng = np.random.default_rng(seed)
    test_full, test_raw, test_sub, test_sub_full, test_sub_folds = [], [], [], [], []
    used = {c for _, pf in fold_fits for c in pf.smooth.values() if c[1] > 1}
    small = CrossfitConfig(kernels=tuple(sorted({k for k, _ in used})) or ("box",),
                           windows=tuple(sorted({w for _, w in used})) or (1,))
    clips = None
    for i in range(n_runs):
        outs = {m.name: load_run(m.runs[i]).predict(table, rows=te.rows) for m in members}
        template = next(iter(outs.values()))
        def blended(weights):
            return template.with_values(**{t: combine(t, [getattr(outs[m.name], t) for m in members if t in m.tasks],
                                                      weights[t], space) if t in weights else None for t in TASKS})

        out = blended(w)
        rows, labels = align_annotations(out, te.ann)
        s = make_series(out, labels, cf, rows)
        test_full.append(_pick(score_values(apply_postfit(s, fit.postfit), s, fit.postfit.au_thresholds)))
        r = make_series(blended(equal), labels, raw, rows)
        test_raw.append(_pick(score_values({t: r.outputs[t] for t in r.tasks}, r, None)))
        if clips is None:
            clips = clip_ids(out.videos, out.video_idx[rows])
            uniq = np.unique(clips)
            draws = [np.flatnonzero(np.isin(clips, rng.choice(uniq, n_pool, replace=False))) for _ in range(subsets)]
        test_sub.append(_mean([_pick(score_values({t: r.outputs[t][d] for t in r.tasks}, r.take(d), None))
                               for d in draws]))
        test_sub_full.append(_mean([_pick(score_values(apply_postfit(s.take(d), fit.postfit), s.take(d),
                                                       fit.postfit.au_thresholds)) for d in draws]))
        by_weights: dict[int, object] = {}  # fold -> test series blended with that fold's weights
        for f in {f for f, _ in fold_fits}:
            by_weights[f] = make_series(blended(fit.fold_weights[f]), labels, small, rows)
        test_sub_folds.append(_mean([_pick(score_values(apply_postfit(by_weights[f].take(d), pf),
                                                        by_weights[f].take(d), pf.au_thresholds))
                                     for f, pf in fold_fits for d in draws]))
    m = {name: _mean(x) for name, x in (("oof tool", oof_tool), ("oof raw honest", oof_raw_hon),
                                        ("oof raw best", oof_raw_best), ("oof fitted in-sample", oof_pp_in),
                                        ("test", test_full), ("test raw", test_raw), ("test raw subsets", test_sub),
                                        ("test subsets", test_sub_full), ("test subsets, fold fits", test_sub_folds))}
    t = {
        "set size": {k: m["test subsets"][k] - m["test"][k] for k in KEYS},
        "pool": {k: m["oof raw honest"][k] - m["test raw subsets"][k] for k in KEYS},
        "fitting": {k: (m["oof tool"][k] - m["oof raw honest"][k]) - (m["test subsets"][k] - m["test raw subsets"][k])
                    for k in KEYS},
        "fit size": {k: m["test subsets, fold fits"][k] - m["test subsets"][k] for k in KEYS},
        "held-out": {k: (m["oof tool"][k] - m["oof raw honest"][k])
                     - (m["test subsets, fold fits"][k] - m["test raw subsets"][k]) for k in KEYS},
        "1-model term": {k: m["oof tool"][k] - m["test"][k] for k in KEYS},
        "fitted gain, cross-fitted oof": {k: m["oof tool"][k] - m["oof raw honest"][k] for k in KEYS},
        "fitted gain, in-sample oof": {k: m["oof fitted in-sample"][k] - m["oof raw honest"][k] for k in KEYS},
        "fitted gain on test": {k: m["test"][k] - m["test raw"][k] for k in KEYS},
        "fitted gain on test subsets": {k: m["test subsets"][k] - m["test raw subsets"][k] for k in KEYS},
        "best epoch, in-sample oof": {k: m["oof raw best"][k] - m["oof raw honest"][k] for k in KEYS},
    }
    return {"search": str(search), "pool_tracks": int(n_pool), "runs": n_runs, "scores": m, "terms": t}


def show(r: dict) -> None:
    print(f"\n{r['search']} ({r['pool_tracks']}-track pool, {r['runs']} runs per member)")
    print(f"  {'':34} " + " ".join(f"{k:>8}" for k in KEYS))
    for name, d in list(r["scores"].items()) + [("--", None)] + list(r["terms"].items()):
        if d is None:
            continue
        print(f"  {name:34} " + " ".join(f"{d[k]:+8.4f}" if name in r["terms"] else f"{d[k]:8.4f}" for k in KEYS))


def plot(path: str, rows: list[dict]) -> None:
    """The figure of `--plot`: per search, the total's terms stacked (negative to the left) and the
    1-model term they add up to."""
    from abaw.plots import pyplot, save_png

    plt = pyplot()

    parts = ("set size", "pool", "fit size", "held-out")
    colours = {"set size": "#90a4ae", "pool": "#ffb74d", "fit size": "#81c784", "held-out": "#e57373",
               "fitting": "#a1887f"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    for i, r in enumerate(rows):
        names = parts if all(n in r["terms"] for n in parts) else TERMS  # kept files before the split: fitting whole
        neg = pos = 0.0
        for n in names:
            v = r["terms"][n]["total"]
            left = neg + v if v < 0 else pos
            ax.barh(i, abs(v), left=left, color=colours[n], edgecolor="white", height=0.6,
                    label=n if n not in ax.get_legend_handles_labels()[1] else None)
            neg, pos = (neg + v, pos) if v < 0 else (neg, pos + v)
        ax.plot(r["terms"]["1-model term"]["total"], i, "kD", ms=5,
                label="1-model term (the sum)" if i == 0 else None)
    s = [Path(r["search"]) for r in rows]
    ax.set_yticks(range(len(rows)), [f"{p.parents[2].name} {p.parents[1].name} ({r['pool_tracks']} clips)"
                                      for p, r in zip(s, rows)])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("out-of-fold 1-model score − test, P_MTL: its terms")
    ax.margins(x=0.04)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("search", type=Path, nargs="*", help="search folders: WORK/runs/SEARCH of bench_accuracy.py")
    ap.add_argument("--test-videos", type=int, default=None,
                    help="score WORK-testN instead (bench_accuracy.py --test-videos N; default: the search's own "
                         "work folder, which already is one when it ends in -testN)")
    ap.add_argument("--subsets", type=int, default=30, help="random pool-sized sets of test tracks per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--from-json", action="append", default=[], help="reprint kept files (repeatable)")
    ap.add_argument("--plot", metavar="PNG", default=None, help="also draw every search's terms (see above)")
    a = ap.parse_args(argv)
    rows = [r for p in a.from_json for r in json.loads(Path(p).read_text())]
    for s in a.search:
        rows.append(terms(s, a.test_videos, a.subsets, a.seed))
        show(rows[-1])
    if a.from_json:
        for r in rows[:len(rows) - len(a.search)]:
            show(r)
    if len(rows) > 1:
        print(f"\nmean ± se over {len(rows)} searches:")
        for name in TERMS + FITTING + ("1-model term",):
            if any(name not in r["terms"] for r in rows):
                continue  # kept files written before the fitting term was split
            x = np.array([[r["terms"][name][k] for k in KEYS] for r in rows])
            se = x.std(0, ddof=1) / np.sqrt(len(x))
            print(f"  {name:18} " + " ".join(f"{mu:+.4f} ± {e:.4f}" for mu, e in zip(x.mean(0), se)))
    if a.plot and rows:
        plot(a.plot, rows)
    if a.json:
        from abaw.io import write_json

        write_json(Path(a.json), rows)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
