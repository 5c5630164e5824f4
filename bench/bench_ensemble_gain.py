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
Printed per folder and as mean ± standard error over folders.
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


def scores_on_test(search: Path, test_videos: int | None = None) -> tuple[dict[int, float], dict]:
    """Test P_MTL of the search's blend with n runs per member averaged -> {n: P}, and composed.json.
    `test_videos`: score the N-track test split of `bench_accuracy.py --test-videos N` instead (its
    work folder WORK-testN: the same training and validation tracks, N fresh test tracks)."""
    import bench_accuracy as ba
    from abaw.data.labels import TASKS
    from abaw.pipeline.blend import read_blend
    from abaw.pipeline.train.outputs import align_annotations, combine, score_outputs
    from abaw.pipeline.train.postprocess import apply_postprocess
    from abaw.pipeline.train.run import load_run

    doc = json.loads((search / "composed.json").read_text())
    system = read_blend(search / "composed.json")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("searches", nargs="+", type=Path, help="WORK/runs/SEARCH folders of bench_accuracy.py")
    ap.add_argument("--test-videos", type=int, default=None, metavar="N",
                    help="score on the N-track test split made by bench_accuracy.py --test-videos N (a bigger, fresh "
                         "test split with the same training and validation tracks) instead of the size's own")
    a = ap.parse_args(argv)
    terms = []
    for s in a.searches:
        test, doc = scores_on_test(s, a.test_videos)
        ens, honest = doc["scores"]["ensemble"], doc["scores"]["honest"]
        n = ens["models"]
        few, many, target = ens["views"]["total"], honest["total"], ens["total"]
        first = few - test[1]
        gain = (target - few) - (test[n["predict"]] - test[1])
        terms.append((target - test[n["predict"]], first, gain))
        print(f"{s.parents[1].name} {s.name}: test P with n models averaged: "
              + ", ".join(f"{m}: {v:.4f}" for m, v in sorted(test.items())))
        print(f"  out-of-fold: {n['view']} model {few:.4f}, {n['honest']} models {many:.4f}, extrapolated to "
              f"{n['predict']}: {target:.4f}; error {terms[-1][0]:+.4f} = 1-model term {first:+.4f} "
              f"+ gain term {gain:+.4f} (gain 1 -> {n['predict']}: out-of-fold {target - few:+.4f}, "
              f"test {test[n['predict']] - test[1]:+.4f})")
    if len(terms) > 1:
        t = np.array(terms)
        m, se, sd = t.mean(0), t.std(0, ddof=1) / np.sqrt(len(t)), t.std(0, ddof=1)
        print(f"over {len(t)} folders (mean ± se, sd): error {m[0]:+.4f} ± {se[0]:.4f} ({sd[0]:.4f}); "
              f"1-model term {m[1]:+.4f} ± {se[1]:.4f} ({sd[1]:.4f}); gain term {m[2]:+.4f} ± {se[2]:.4f} "
              f"({sd[2]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
