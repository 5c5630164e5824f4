"""Where the repeated k-fold estimate's error comes from (a benchmark, no assertion).

    python bench/bench_ensemble_gain.py bench/out/work/s-aff-wild2/small-{0..7}/runs/search-kf2-s* \\
        bench/out/work/s-aff-wild2/large-0/runs/search-kf2-s0

Each argument is a finished `abaw search --folds K --repeats R --compose blend` folder inside a
`bench/bench_accuracy.py` work folder (WORK/runs/SEARCH). Its blend (`composed.json`: weights per
member and the post-processing, kept fixed) predicts the test split with n of each member's K x R
fold runs averaged, as `abaw predict --compose` would with fewer runs: n = 1 (each run alone,
mean score), n = r (one run per partition, for r = 2..R: the average over the K folds), n = K
(each partition, mean) and n = K x R (all: the delivered system). Beside it, out-of-fold, the
blend's own numbers (`scores.ensemble`): the 1-model views, the R-model honest estimate and its
extrapolation to K x R (README: Folds).

The extrapolated estimate's error (extrapolated - test with K x R models) splits into
- the 1-model term: out-of-fold 1-model score - test 1-model score (which videos were scored:
  validation-split vs test-split noise, and any bias of the single-model estimate), and
- the gain term: extrapolated gain 1 -> K x R out-of-fold - the same gain on test (how well
  score(n) = a - c/n fitted through 1 and R models out-of-fold predicts the ensemble gain).
Printed per folder and as mean ± standard error over folders, and per kind of search (the folder
name without its `-sSEED`, e.g. `search-kf2` / `search-kf2st`) with the paired difference between
two kinds over the work folders that have both. `--json PATH` keeps the figures; `--plot PNG`
draws each work folder's extrapolated − test per kind (± the estimate's printed SE, pairs joined,
the ±0.05 target shaded); `--from-json PATH` (repeatable) redraws and reprints from kept files without scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def scores_on_test(search: Path, test_videos: int | None = None, composed: Path | None = None
                   ) -> tuple[dict[int, float], dict]:
    """Test P_MTL of the search's blend with n runs per member averaged -> {n: P}, and composed.json.
    `test_videos`: score the N-track test split of `bench_accuracy.py --test-videos N` instead (its
    work folder WORK-testN: the same training and validation tracks, N fresh test tracks). `composed`:
    another blend file of the search's runs, in the search folder (default: its composed.json)."""
    import bench_accuracy as ba
    from abaw.data.labels import TASKS
    from abaw.pipeline.blend import read_blend
    from abaw.pipeline.train.outputs import align_annotations, combine, score_outputs
    from abaw.pipeline.train.postprocess import apply_postprocess
    from abaw.pipeline.train.run import load_run

    composed = composed or search / "composed.json"
    doc = json.loads(composed.read_text())
    system = read_blend(composed)
    models = (doc["scores"].get("ensemble") or {}).get("models")
    if not models:
        raise SystemExit(f"{search}: its blend has no repeated k-fold views (search --repeats >= 2 --compose blend)")
    work = search.parents[1]
    table, _, splits = ba.load_splits(work if test_videos is None else ba.test_folder(work, test_videos))
    cache: dict[str, object] = {}

    def predicted(run: str):
        if run not in cache:
            cache[run] = load_run(search / run).predict(table, rows=splits["test"].rows)
        return cache[run]

    members = {t: [(m["runs"], m["weight"]) for m in e["members"]] for t, e in doc["tasks"].items()}
    n_runs = models["predict"]
    repeats = models["honest"]
    k = n_runs // repeats

    def score(pick: list[int]) -> float:
        values = {}
        for t, ms in members.items():
            arrays = []
            for runs, _ in ms:
                if len(runs) != n_runs:
                    raise SystemExit(f"{search}: {t.upper()} member has {len(runs)} runs, not {n_runs}")
                arrays.append(np.mean([getattr(predicted(runs[i]), t) for i in pick], 0))
            values[t] = combine(t, arrays, tuple(w for _, w in ms), doc["space"])
        template = predicted(next(iter(members.values()))[0][0][pick[0]])  # the test frames, shared by every run
        out = apply_postprocess(template.with_values(**{t: values.get(t) for t in TASKS}), system["postprocess"])
        rows, labels = align_annotations(out, splits["test"].ann)
        return score_outputs(out.take(rows), labels, system["postprocess"].au_thresholds).total

    # runs are partition-major: fold f of partition p is run p * k + f
    out = {1: float(np.mean([score([i]) for i in range(n_runs)]))}
    for r in range(2, repeats + 1):
        out[r] = float(np.mean([score([p * k + f for p in range(r)]) for f in range(k)]))
    out[k] = float(np.mean([score(list(range(p * k, p * k + k))) for p in range(repeats)]))
    out[n_runs] = score(list(range(n_runs)))
    return out, doc


def kind(search: Path) -> str:
    """`search-kf2-s3` -> `search-kf2`: the search's kind, shared across seeds."""
    name = search.name
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def summarise(rows: list[dict]) -> None:
    """Mean ± se per kind and the paired differences between kinds (work folders having both)."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    by = {k: {r["work"]: r for r in rows if r["kind"] == k} for k in kinds}
    for k in kinds:
        e = np.array([r["error"] for r in by[k].values()])
        if len(e) > 1:
            print(f"{k}: {len(e)} folders, error {e.mean():+.4f} ± {e.std(ddof=1) / np.sqrt(len(e)):.4f} "
                  f"(sd {e.std(ddof=1):.4f}), within 0.05 in {int((np.abs(e) <= 0.05).sum())}")
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            both = [w for w in by[a] if w in by[b]]
            if len(both) > 1:
                d = np.array([by[b][w]["error"] - by[a][w]["error"] for w in both])
                print(f"{b} - {a}: {len(d)} paired folders, error {d.mean():+.4f} ± "
                      f"{d.std(ddof=1) / np.sqrt(len(d)):.4f} (sd {d.std(ddof=1):.4f})")


def plot(path: str, rows: list[dict]) -> None:
    """The figure of `--plot`: one line per work folder, extrapolated - test per kind of search."""
    from abaw.plots import pyplot, save_png

    plt = pyplot()

    works = list(dict.fromkeys(r["work"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(works) + 1.8))
    ax.axvspan(-0.05, 0.05, color="0.88", label="± 0.05 (the target)")
    ax.axvline(0, color="k", lw=0.8)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    at = {w: i for i, w in enumerate(works)}
    for w in works:
        pts = [r for r in rows if r["work"] == w]
        if len(pts) > 1:
            ax.plot([r["error"] for r in pts], [at[w]] * len(pts), "-", color="0.6", lw=1)
    for j, k in enumerate(kinds):
        rs = [r for r in rows if r["kind"] == k]
        e = np.array([r["error"] for r in rs])
        off = (j - (len(kinds) - 1) / 2) * 0.25
        ax.errorbar(e, [at[r["work"]] + off for r in rs], xerr=[r["honest_se"] or 0 for r in rs], fmt="o", ms=4,
                    color=colours[j % len(colours)], label=f"{k}: mean {e.mean():+.3f}, within 0.05 in "
                    f"{int((np.abs(e) <= 0.05).sum())} / {len(e)}")
    ax.set_yticks(range(len(works)), works)
    ax.invert_yaxis()
    ax.set_xlabel("extrapolated honest estimate − test P_MTL (± the estimate's SE)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0))
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("searches", nargs="*", type=Path, help="WORK/runs/SEARCH folders of bench_accuracy.py")
    ap.add_argument("--test-videos", type=int, default=None, metavar="N",
                    help="score on the N-track test split made by bench_accuracy.py --test-videos N (a bigger, fresh "
                         "test split with the same training and validation tracks) instead of the size's own")
    ap.add_argument("--json", metavar="PATH", help="also write the figures per folder (JSON)")
    ap.add_argument("--plot", metavar="PNG", help="also draw them (see above)")
    ap.add_argument("--from-json", metavar="PATH", action="append",
                    help="reprint and redraw --json files instead of scoring (repeatable: their folders in order)")
    a = ap.parse_args(argv)
    if a.from_json:
        if a.searches:
            ap.error("--from-json takes no search folders")
        rows = [r for p in a.from_json for r in json.loads(Path(p).read_text())["folders"]]
        summarise(rows)
        if a.plot:
            plot(a.plot, rows)
        return 0
    if not a.searches:
        ap.error("name at least one search folder (or --from-json)")
    rows = []
    for s in a.searches:
        test, doc = scores_on_test(s, a.test_videos)
        ens, honest = doc["scores"]["ensemble"], doc["scores"]["honest"]
        n = ens["models"]
        few, many, target = ens["views"]["total"], honest["total"], ens["total"]
        first = few - test[1]
        gain = (target - few) - (test[n["predict"]] - test[1])
        rows.append({"work": f"{s.parents[2].name}/{s.parents[1].name}", "search": s.name, "kind": kind(s), "test": test,
                     "extrapolated": target, "honest": many, "honest_se": honest.get("se"), "one_model": few,
                     "error": target - test[n["predict"]], "one_model_term": first, "gain_term": gain})
        print(f"{s.parents[1].name} {s.name}: test P with n models averaged: "
              + ", ".join(f"{m}: {v:.4f}" for m, v in sorted(test.items())))
        print(f"  out-of-fold: {n['view']} model {few:.4f}, {n['honest']} models {many:.4f}, extrapolated to "
              f"{n['predict']}: {target:.4f}; error {rows[-1]['error']:+.4f} = 1-model term {first:+.4f} "
              f"+ gain term {gain:+.4f} (gain 1 -> {n['predict']}: out-of-fold {target - few:+.4f}, "
              f"test {test[n['predict']] - test[1]:+.4f})")
    if len(rows) > 1:
        t = np.array([(r["error"], r["one_model_term"], r["gain_term"]) for r in rows])
        m, se, sd = t.mean(0), t.std(0, ddof=1) / np.sqrt(len(t)), t.std(0, ddof=1)
        print(f"over {len(t)} folders (mean ± se, sd): error {m[0]:+.4f} ± {se[0]:.4f} ({sd[0]:.4f}); "
              f"1-model term {m[1]:+.4f} ± {se[1]:.4f} ({sd[1]:.4f}); gain term {m[2]:+.4f} ± {se[2]:.4f} "
              f"({sd[2]:.4f})")
    summarise(rows)
    if a.json:
        from abaw.io import atomic_write

        with atomic_write(a.json, "w") as f:
            json.dump({"test_videos": a.test_videos, "folders": rows}, f, indent=1)
        print(f"wrote {a.json}")
    if a.plot:
        plot(a.plot, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
