"""Is a work folder's train + validation pool harder or easier than its test tracks, for a model
fitted on neither? (a benchmark, no assertion)

    python bench/bench_split_difficulty.py bench/out/work/dense/large-0-test600 bench/out/work/dense/large-1-test600

Every honest estimate of a search is computed on the train + validation tracks (the out-of-fold
pool) and compared with the test split's score; were the pool itself harder than the test
tracks, every system's estimate would be low by that much, and no estimator fitted on the pool
could see it. This script measures the pool's difficulty with a model that saw neither: the scikit-learn
baseline of `bench_accuracy.py` (Ridge / balanced logistic regression on the standardised cached
features) fitted on a random half of the test tracks (by video), then scored raw (no smoothing,
AU at 0.5) on the whole pool and on random subsets of the other test half with as many tracks as
the pool (the same set size, so the metric's set-size effect cancels). Printed per draw and as
the mean difference pool - test subsets with its spread. Use it on folders with many test tracks
(`bench_accuracy.py --test-videos 600`). Over the sparse and dense runs of the README it did not
track the estimates' errors (README: The dense profile on 600 fresh test tracks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def pool_vs_test(work: Path, draws: int, subsets: int, seed: int) -> list[dict]:
    import bench_accuracy as ba
    from abaw.pipeline.train.outputs import score_outputs

    table, keys, splits = ba.load_splits(work)
    pool = ba.train_val_pool(table, splits)
    n_pool = len(np.unique(table.video_idx[pool.rows]))
    te = splits["test"]
    vid = table.video_idx[te.rows]
    videos = np.unique(vid)
    out = []
    for k in range(draws):
        rng = np.random.default_rng([seed, k])
        perm = rng.permutation(videos)
        fit_v, score_v = perm[: len(videos) // 2], perm[len(videos) // 2:]
        fa, sb = np.flatnonzero(np.isin(vid, fit_v)), np.flatnonzero(np.isin(vid, score_v))
        sp = {"training": ba.Split(None, te.rows[fa], te.labels.take(fa)),
              "validation": ba.Split(None, pool.rows, pool.labels),
              "test": ba.Split(None, te.rows[sb], te.labels.take(sb))}
        res = ba.baseline(table, keys, sp)
        p = score_outputs(res["validation"], pool.labels, None)
        labels_b = te.labels.take(sb)
        subs = []
        for _ in range(subsets if n_pool < len(score_v) else 1):  # a pool as big as the half: all of it, once
            pick = np.flatnonzero(np.isin(vid[sb], rng.choice(score_v, min(n_pool, len(score_v)), replace=False)))
            subs.append(score_outputs(res["test"].take(pick), labels_b.take(pick), None).total)
        out.append({"pool": p.total, "pool_tasks": (p.va, p.expr, p.au), "n_pool": n_pool,
                    "n_test": len(score_v), "test_sub": float(np.mean(subs)), "test_sub_sd": float(np.std(subs))})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, nargs="+", help="bench_accuracy work folders (cache.zarr, data/)")
    ap.add_argument("--draws", type=int, default=3, help="random halves of the test tracks")
    ap.add_argument("--subsets", type=int, default=40, help="pool-sized subsets of the scored half per draw")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for w in a.work:
        rows = pool_vs_test(w, a.draws, a.subsets, a.seed)
        for k, r in enumerate(rows):
            print(f"{w.name} draw {k}: pool ({r['n_pool']} tracks) P {r['pool']:.4f} "
                  f"(VA {r['pool_tasks'][0]:.3f} EXPR {r['pool_tasks'][1]:.3f} AU {r['pool_tasks'][2]:.3f}); "
                  f"{r['n_pool']}-track subsets of the other {r['n_test']} test tracks {r['test_sub']:.4f} "
                  f"(sd {r['test_sub_sd']:.3f})", flush=True)
        d = np.array([r["pool"] - r["test_sub"] for r in rows])
        n_pool, n_test = rows[0]["n_pool"], rows[0]["n_test"]
        spread = (f"a {n_pool}-track set varies by sd {np.mean([r['test_sub_sd'] for r in rows]):.3f} within half "
                  "the test tracks" if n_pool < n_test else
                  f"the pool has more tracks than half the test split: compared with all {n_test} of the other half")
        print(f"{w.name}: pool - test {d.mean():+.4f} (over {len(d)} draws: {' '.join(f'{x:+.3f}' for x in d)}); {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
