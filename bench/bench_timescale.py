"""Benchmark: the time scale of the temporal windows in training and prediction.

    python bench/bench_timescale.py                     # synth defaults (24/8/6 tracks), seed 0
    python bench/bench_timescale.py --seeds 0,1 --epochs 20

Per seed: `abaw synth --all-crops --no-videos` (sparse `s-aff-wild2` labels, the crop of
every face frame), `abaw extract` of `mtcnn:onet` over `cropped_aligned/` (a dense cache:
every face frame, like real `cropped_aligned/`), then on the same features:

- `abaw train-heads` with `--context labelled` (default: windows over the labelled frames,
  ~4 frames apart) and with `--context dense` (windows over every cached frame, losses on
  the labelled ones): the validation P_MTL each reports (raw and after post-processing);
- each run predicts the test videos (every cached frame, as `predict --test-list` and
  `predict --video` do) with its own post-processing, scored on the hidden test labels:
  with the time-scale fix (`time_scale="auto"`: phase-shifted passes at the training gap)
  and without it (`"off"`: windows over consecutive frames), and, as the reference of what
  training saw, on the labelled test frames alone.

Writes JSON to bench/out/timescale.json. A benchmark, not a test: no assertion.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = "mtcnn:onet"


def sh(*args: str) -> None:
    print("$ abaw", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "abaw", *args], check=True, cwd=ROOT)


def test_score(run, table, ann, mode: str, rows=None) -> dict:
    """P_MTL on `ann` of the run's post-processed predictions (frames without one: nearest neighbour)."""
    from abaw.metrics import mtl_score
    from abaw.pipeline.predict.system import expand_to_entries
    from abaw.pipeline.train.postprocess import apply_postprocess

    out = apply_postprocess(run.predict(table, rows=rows, time_scale=mode), run.postprocess)
    thr = np.full(12, 0.5) if run.postprocess.au_thresholds is None else np.asarray(run.postprocess.au_thresholds)
    dec, _ = expand_to_entries(out, thr, [ann.videos[i] for i in ann.video_idx], ann.frame)
    s = mtl_score(dec["va"], ann.va, ann.va_valid, dec["expr"], ann.expr, ann.expr_valid,
                  dec["au"], ann.au, ann.au_valid)
    ts = run.time_scale(table, rows, mode)
    return {"mode": ts.mode, "step": ts.step, **{k: round(float(v), 4) for k, v in s.summary().items()
                                                  if k in ("total", "va", "expr", "au") and v is not None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "timescale"))
    ap.add_argument("--synth-args", default="", help="extra `abaw synth` options, e.g. '--train-videos 48'")
    args = ap.parse_args()
    from abaw.cache.store import load_features
    from abaw.data.annotations import read_annotations
    from abaw.extract.backbones import spec_key
    from abaw.pipeline.train.dataset import align_labels
    from abaw.pipeline.train.run import load_run

    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        work = Path(args.work) / f"seed{seed}"
        data, cache = work / "data", work / "cache.zarr"
        if not (data / "synth.json").exists():
            sh("synth", str(data), "--seed", str(seed), "--all-crops", "--no-videos", "--overwrite",
               *args.synth_args.split())
        sh("extract", str(data / "cropped_aligned"), "-o", str(cache), "-b", SPEC, "-q")
        test_ann = read_annotations(data / "test_set_annotations.txt")
        table = load_features(cache, [spec_key(SPEC)], videos=list(test_ann.videos))
        lab_rows = align_labels(table, test_ann, allow_missing=True).rows
        rec = {"seed": seed, "test_cached_frames": int(table.face.sum()), "test_labelled": len(test_ann)}
        for context in ("labelled", "dense"):
            out = work / f"run_{context}"
            sh("train-heads", "--cache", str(cache), "--data", str(data), "--out", str(out), "--context", context,
               "--epochs", str(args.epochs), "--quiet", "--overwrite", "--allow-missing")
            run = load_run(out)
            res = json.loads((out / "result.json").read_text())
            d = json.loads((out / "data.json").read_text())
            rec[context] = {
                "val_raw": round(res["val_raw"]["total"], 4), "val_final": round(res["val_final"]["total"], 4),
                "train_gaps": d["train"]["gaps"]["gap"], "window_gap": d["time_scale"]["window_gap"],
                "context_frames": d["train"]["context_frames"],
                "test_dense_fixed": test_score(run, table, test_ann, "auto"),
                "test_dense_off": test_score(run, table, test_ann, "off"),
                "test_labelled_only": test_score(run, table, test_ann, "auto", rows=lab_rows),
            }
        results.append(rec)
        print(json.dumps(rec, indent=1), flush=True)
    dest = ROOT / "bench" / "out" / "timescale.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=1))
    print("\ncontext   val P (raw/final)   test P: dense+fix  dense, no fix  labelled frames only")
    for r in results:
        for c in ("labelled", "dense"):
            x = r[c]
            print(f"seed {r['seed']} {c:<9} {x['val_raw']:.3f}/{x['val_final']:.3f}        "
                  f"{x['test_dense_fixed']['total']:.3f} (step {x['test_dense_fixed']['step']})   "
                  f"{x['test_dense_off']['total']:.3f}          {x['test_labelled_only']['total']:.3f}")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
