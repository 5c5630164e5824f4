"""How the ABAW metric depends on the size of the scored set (a benchmark, no assertion).

    python bench/bench_metric_set_size.py bench/out/work/s-aff-wild2/small-0 --run linear-s0

One finished `train-heads` run of a `bench/bench_accuracy.py` work folder predicts the test
split once (its own post-processing); the script prints P_MTL (and per task) on all test
tracks and the mean over random subsets of N tracks (drawn without replacement). The official
metric scores an expression class or AU absent from a small set as 0 and CCC loses with few
tracks, so the same predictions score lower on fewer tracks: an honest estimate on a
validation split smaller than the test split is conservative by that much, whatever the
estimator (README: Accuracy against strong baselines).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv=None) -> int:
    import bench_accuracy as ba
    from abaw.pipeline.train.outputs import align_annotations, score_outputs
    from abaw.pipeline.train.postprocess import apply_postprocess
    from abaw.pipeline.train.run import load_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, help="a bench_accuracy work folder (cache.zarr, data/, runs/)")
    ap.add_argument("--run", required=True, help="a run folder name under WORK/runs")
    ap.add_argument("--sizes", default="20,40", help="subset sizes in tracks")
    ap.add_argument("--draws", type=int, default=100)
    a = ap.parse_args(argv)
    run = load_run(a.work / "runs" / a.run)
    table, _, splits = ba.load_splits(a.work)
    out = apply_postprocess(run.predict(table, rows=splits["test"].rows), run.postprocess)
    thr = run.postprocess.au_thresholds
    ann = splits["test"].ann

    def score(sub):
        rows, labels = align_annotations(out, sub)
        s = score_outputs(out.take(rows), labels, thr)
        return np.array([s.va, s.expr, s.au, s.total])

    full = score(ann)
    print(f"{a.work.name} {a.run}: all {len(ann.videos)} test tracks P {full[3]:.4f} "
          f"(VA {full[0]:.4f}, EXPR {full[1]:.4f}, AU {full[2]:.4f})")
    rng = np.random.default_rng(0)
    for n in (int(x) for x in a.sizes.split(",")):
        subs = np.array([score(ann.select_videos(sorted(rng.choice(list(ann.videos), n, replace=False))))
                         for _ in range(a.draws)])
        m, d = subs.mean(0), subs.mean(0) - full
        print(f"  {n} tracks ({a.draws} draws): mean P {m[3]:.4f} ({d[3]:+.4f}; VA {d[0]:+.4f}, EXPR {d[1]:+.4f}, "
              f"AU {d[2]:+.4f}), sd {subs[:, 3].std():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
