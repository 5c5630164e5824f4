"""Is an out-of-fold score a fair estimate of one fold model's score on new tracks? (a benchmark,
no assertion)

    python bench/bench_oof_bias.py bench/out/work/dense/large-0-test600 --draws 3

Every honest estimate of `abaw search --folds K` starts from the out-of-fold (OOF) score: each
train + validation track scored by the fold model that did not see it, pooled. This script
asks whether that pooled score equals what one fold model scores on tracks it never saw, with
the pool's difficulty taken out: the pool is replaced by a random set of *test* tracks as many
as the work folder's train + validation pool (same distribution as the rest of test), split into
K folds the way the search splits (`kfold_videos`), and the scikit-learn baseline of
`bench_accuracy.py` fitted K times. Scored raw (no smoothing, AU at 0.5) on sets of the same
number of tracks, so the metric's set-size effect cancels:

- `oof`: the pool's out-of-fold outputs, pooled (what the search's estimate starts from);
- `split`: a pool-sized set of the *other* test tracks, split into K folds the same way, fold j
  scored by model j, pooled: K models' outputs mixed as in OOF, but no track was left out of
  the model that scores it, so `oof - split` is the leave-out effect (a held-out fold's labels
  are missing from exactly the model that scores it);
- `one`: one fold model on the whole pool-sized set, the mean over the K models: `split - one`
  is the cost of pooling K differently-fitted models;
- `avg`: the K models' outputs averaged (what the search predicts test with): `avg - one` is
  the ensemble gain that the tool's extrapolation models.

`oof - one` is the 1-model term's bias. `--stratify` splits the folds with the labels balanced
as well as the frame counts (`kfold_videos(..., stratify=True)`), to see how much of the
leave-out effect comes from folds whose label mix differs from the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _fold_rows(ann, vid_name: np.ndarray, folds: int, seed: int, stratify: bool) -> list[np.ndarray]:
    from abaw.pipeline.search.runner import kfold_videos

    return [np.flatnonzero(np.isin(vid_name, f)) for f in kfold_videos(ann, folds, seed, stratify=stratify)]


def decompose(work: Path, draws: int, subsets: int, folds_k: int, seed: int, stratify: bool) -> list[dict]:
    import bench_accuracy as ba
    from abaw.data.labels import clip_of
    from abaw.pipeline.train.outputs import score_outputs

    table, keys, splits = ba.load_splits(work)
    pool = ba.train_val_pool(table, splits)
    n_pool = len({clip_of(v) for v in pool.ann.videos})
    te = splits["test"]
    names = np.asarray(table.videos, dtype=object)[table.video_idx[te.rows]]
    clips = sorted({clip_of(v) for v in te.ann.videos})
    if 2 * n_pool > len(clips):
        raise SystemExit(f"{work}: {len(clips)} test clips cannot hold a pool of {n_pool} and a set as big; "
                         "use a folder made with bench_accuracy.py --test-videos 600")
    clip_rows = np.asarray([clip_of(v) for v in names], dtype=object)
    score = lambda out, rows: score_outputs(out, te.labels.take(rows), None)  # noqa: E731  (out: outputs of rows)
    out = []
    for k in range(draws):
        rng = np.random.default_rng([seed, k])
        perm = list(rng.permutation(clips))
        in_pool = np.isin(clip_rows, perm[:n_pool])
        p_rows, r_rows = np.flatnonzero(in_pool), np.flatnonzero(~in_pool)
        p_ann = te.ann.select_videos([v for v in te.ann.videos if clip_of(v) in set(perm[:n_pool])])
        folds = _fold_rows(p_ann, names[p_rows], folds_k, seed + k, stratify)
        models, oof_parts = [], []
        for fr in folds:
            held = p_rows[fr]
            kept = np.setdiff1d(p_rows, held)
            sp = {"training": ba.Split(None, te.rows[kept], te.labels.take(kept)),
                  "validation": ba.Split(None, te.rows[held], te.labels.take(held)),
                  "test": ba.Split(None, te.rows[r_rows], te.labels.take(r_rows))}
            res = ba.baseline(table, keys, sp)
            oof_parts.append(res["validation"])
            models.append(res["test"])  # outputs on every row of R
        a = score(_mixed(oof_parts, folds), p_rows)
        rest = perm[n_pool:]
        rec = {"oof": a.total, "oof_tasks": (a.va, a.expr, a.au), "split": [], "one": [], "avg": [], "n": n_pool}
        for s in range(subsets):
            pick = set(rng.choice(rest, n_pool, replace=False))
            sub = np.flatnonzero(np.isin(clip_rows[r_rows], list(pick)))  # rows of R (the models' test rows)
            rows = r_rows[sub]
            s_ann = te.ann.select_videos([v for v in te.ann.videos if clip_of(v) in pick])
            parts = _fold_rows(s_ann, names[rows], folds_k, seed + 100 + s, stratify)
            rec["split"].append(score(_mixed([models[j].take(sub[fr]) for j, fr in enumerate(parts)], parts),
                                      rows).total)
            rec["one"].append(float(np.mean([score(m.take(sub), rows).total for m in models])))
            mean = ba.outputs_for(table, te.rows[rows], *[np.mean([getattr(m, t)[sub] for m in models], 0)
                                                          for t in ("va", "expr", "au")])
            rec["avg"].append(score(mean, rows).total)
        out.append({**rec, **{key: float(np.mean(rec[key])) for key in ("split", "one", "avg")}})
    return out


def _mixed(parts: list, where: list[np.ndarray]):
    """One set's outputs pooled from several models: `parts[j]` holds the outputs of positions `where[j]`."""
    order = np.argsort(np.concatenate(where))
    arrays = {t: np.concatenate([getattr(p, t) for p in parts])[order] for t in ("va", "expr", "au")}
    return type(parts[0])(parts[0].videos, np.concatenate([p.video_idx for p in parts])[order],
                          np.concatenate([p.frame for p in parts])[order], **arrays)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, nargs="+", help="bench_accuracy work folders made with --test-videos 600")
    ap.add_argument("--draws", type=int, default=3, help="random pools drawn from the test tracks")
    ap.add_argument("--subsets", type=int, default=10, help="pool-sized sets of the other test tracks per draw")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--stratify", action="store_true", help="folds with balanced labels (kfold_videos stratify=True)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for w in a.work:
        rows = decompose(w, a.draws, a.subsets, a.folds, a.seed, a.stratify)
        for k, r in enumerate(rows):
            print(f"{w.name} draw {k} ({r['n']} clips{', stratified' if a.stratify else ''}): oof {r['oof']:.4f} "
                  f"(VA {r['oof_tasks'][0]:.3f} EXPR {r['oof_tasks'][1]:.3f} AU {r['oof_tasks'][2]:.3f}) "
                  f"split {r['split']:.4f} one {r['one']:.4f} avg {r['avg']:.4f}", flush=True)
        m = {key: np.array([r[key] for r in rows]) for key in ("oof", "split", "one", "avg")}
        d = lambda a, b: f"{np.mean(m[a] - m[b]):+.4f} ({' '.join(f'{x:+.3f}' for x in m[a] - m[b])})"  # noqa: E731
        print(f"{w.name}: oof - one {d('oof', 'one')} = leave-out oof - split {d('oof', 'split')} "
              f"+ pooling split - one {d('split', 'one')}; ensemble gain avg - one {d('avg', 'one')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
