"""Benchmark: do the cheap heads beat a strong linear baseline, and is validation honest?

    python bench/bench_accuracy.py                               # small, seed 0, sparse (s-aff-wild2)
    python bench/bench_accuracy.py --sizes small,large --seeds 0,1 --profile dense
    python bench/bench_accuracy.py --config default --config 'e60=--epochs 60 --au-pos-weight auto'
    python bench/bench_accuracy.py --config default --blend 'default+linear=default+linear'
    python bench/bench_accuracy.py --config default --search 'grid=--temporal transformer,gru --lr 0.0005,0.001'

For each size x seed: `abaw synth` (small ~2.4k training frames, large ~14k), `abaw extract`
of `mtcnn:onet` + `mtcnn:rnet` over `cropped_aligned/`, then on the SAME features, with the
test split only ever used for scoring:

- heads: `python -m abaw train-heads` with each `--config` (name=flags; `default` = no flag),
  plus the built-in `linear` head architecture (HSEmotion recipe) unless `--no-linear`;
- baseline: scikit-learn on standardised features: Ridge for V and A (clipped),
  `LogisticRegression(class_weight="balanced")` for EXPR and each AU, box-smoothed over 9
  frames within each video, AU thresholds fitted on validation after smoothing.

Per system: the validation score as the tool reports it (optimistic: epoch and
post-processing chosen on the frames scored), the honest estimate (heads: the tool's own,
`abaw.pipeline.train.honest`, epoch and post-processing fitted on other validation folds;
baselines: post-processing cross-fitted leave-one-clip-out by `abaw.pipeline.crossfit`)
and the test score of the system as delivered. Prints per-task test ratios heads / the
stronger baseline and the gap honest estimate - test; writes JSON to bench/out/. A
benchmark, not a test: no assertion. Targets (issue 10): every ratio >= 1.00 at both
sizes; |honest - test| <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw.data.annotations import read_annotations  # noqa: E402
from abaw.data.labels import clip_ids  # noqa: E402
from abaw.io import write_json  # noqa: E402
from abaw.pipeline.crossfit import CrossfitConfig, PostFit, apply_to, crossfit, make_series, score_values  # noqa: E402

# train / val / test tracks per profile: dense ~150 labelled frames per track; s-aff-wild2 ~30 (sparse);
# small ~2.4k training frames, large ~14k; big val/test splits keep the scores' noise low.
SIZES = {"dense": {"small": (16, 8, 24), "large": (90, 24, 20)},
         "s-aff-wild2": {"small": (80, 40, 80), "large": (450, 100, 150)}}
BACKBONES = ("mtcnn:onet", "mtcnn:rnet")
TASKS = ("va", "expr", "au")
BASELINE_PP = CrossfitConfig(kernels=("box",), windows=(9,))  # fixed box 9 (+ thresholds fitted)
FULL_PP = CrossfitConfig()


def sh(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log, "a") as f:
        f.write("$ " + shlex.join(args) + "\n")
        f.flush()
        r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"command failed ({r.returncode}), see {log}: {shlex.join(args)}")


def synth_profile(requested: str) -> tuple[list[str], str]:
    """`--profile X` flags for `abaw synth` if it has them, else dense (and say so)."""
    h = subprocess.run([sys.executable, "-m", "abaw", "synth", "--help"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT).stdout
    if "--profile" in h:
        return ["--profile", requested], requested
    if requested != "dense":
        print(f"note: `abaw synth` has no --profile yet; using the dense data instead of {requested!r}")
    return [], "dense"


def prepare(work: Path, size: str, seed: int, profile_flags: list[str], log: Path, profile: str,
            test_videos: int | None = None) -> Path:
    """Synth data + feature cache under work/<size>-<seed>/ (reused when complete);
    `test_videos`: another test split size (work/<size>-<seed>-test<N>/: the same training and
    validation tracks, and N test tracks; dense: the first of them the size's own; s-aff-wild2:
    all new, as track lengths are drawn stratified over each split), reusing the size's runs
    where it can (`reuse_runs`)."""
    tr, va, te = SIZES[profile][size]
    own = work / f"{size}-{seed}"
    d = own if test_videos is None else test_folder(own, test_videos)
    te = te if test_videos is None else test_videos
    if not (d / "data" / "synth.json").exists():
        sh([sys.executable, "-m", "abaw", "synth", str(d / "data"), "--seed", str(seed), "--train-videos", str(tr),
            "--val-videos", str(va), "--test-videos", str(te), "--no-videos", "--jobs", "1", "--overwrite",
            *profile_flags], log)
    if not (d / "extract.done").exists():
        sh([sys.executable, "-m", "abaw", "extract", str(d / "data" / "cropped_aligned"), "-o", str(d / "cache.zarr"),
            *sum((["-b", b] for b in BACKBONES), []), "--device", "cpu"], log)
        (d / "extract.done").write_text("ok\n")
    if test_videos is not None:
        reuse_runs(own, d)
    return d


def test_folder(own: Path, test_videos: int) -> Path:
    """The work folder of a size with an N-track test split instead of its own: `<size>-<seed>-test<N>`."""
    return own.with_name(f"{own.name}-test{test_videos}")


def reuse_runs(src: Path, dst: Path) -> bool:
    """Copy the size's own runs and searches into its bigger-test folder, so they are reused there
    (runs by their flags, searches by their data identity) instead of trained again: only when both
    folders have the same training and validation files, byte for byte (sparse profiles; dense
    keeps the original generator's bytes, where a search would refuse), and dst has no runs yet."""
    import filecmp
    import shutil

    names = ("training_set_annotations.txt", "validation_set_annotations.txt")
    if (dst / "runs").exists() or not (src / "runs").is_dir() or \
            not all((src / "data" / n).exists() and filecmp.cmp(src / "data" / n, dst / "data" / n, shallow=False)
                    for n in names):
        return False
    shutil.copytree(src / "runs", dst / "runs", symlinks=True)
    return True


@dataclass
class Split:
    ann: object
    rows: np.ndarray  # rows of the feature table
    labels: object


def load_splits(d: Path):
    from abaw.cache.store import FeatureStore, load_features
    from abaw.pipeline.train.dataset import align_labels

    fs = FeatureStore(d / "cache.zarr", "r")
    keys = tuple(sorted({k for v in fs.videos() for k in fs.feature_keys(v)}))
    table = load_features(fs, keys)
    splits = {}
    for name in ("training", "validation", "test"):
        ann = read_annotations(d / "data" / f"{name}_set_annotations.txt")
        f = align_labels(table, ann, allow_missing=True)
        splits[name] = Split(ann, f.rows, f.labels)
    return table, keys, splits


def outputs_for(table, rows, va=None, expr=None, au=None):
    from abaw.pipeline.train.outputs import FrameOutputs

    f = lambda a: None if a is None else np.asarray(a, np.float32)  # noqa: E731
    return FrameOutputs(tuple(table.videos), table.video_idx[rows].astype(np.int32), table.frame[rows].astype(np.int32),
                        f(va), f(expr), f(au))


def train_val_pool(table, splits) -> Split:
    """The training and validation tracks together: what `abaw search --folds K` splits into folds
    and every out-of-fold estimate is computed on."""
    from abaw.data.annotations import Annotations
    from abaw.pipeline.train.dataset import align_labels

    every = Annotations.concat([splits["training"].ann, splits["validation"].ann])
    f = align_labels(table, every, allow_missing=True)
    return Split(every, f.rows, f.labels)


def baseline_kfold(table, keys, splits, folds: int, seed: int, stratify: bool = False) -> dict:
    """The scikit-learn baseline as `abaw search --folds K` trains: K fits on K-1 folds of train +
    val videos (the search's own split: frame-only folds as `--no-stratify`, the default when the
    README's rows were measured, or `stratify` as the search's default now), out-of-fold outputs
    on every train + val frame (its "validation": post-processing fitted there) and the K fits'
    test outputs averaged."""
    from abaw.pipeline.search.runner import kfold_videos

    pool = train_val_pool(table, splits)
    vid_name = np.asarray(table.videos, dtype=object)[table.video_idx[pool.rows]]
    oof = {t: None for t in TASKS}
    test = []
    for fold in kfold_videos(pool.ann, folds, seed, stratify=stratify):
        held = np.isin(vid_name, fold)
        sp = {"training": Split(None, pool.rows[~held], pool.labels.take(np.flatnonzero(~held))),
              "validation": Split(None, pool.rows[held], pool.labels.take(np.flatnonzero(held))),
              "test": splits["test"]}
        out = baseline(table, keys, sp)
        for t in TASKS:
            v = getattr(out["validation"], t)
            if oof[t] is None:
                oof[t] = np.zeros((len(pool.rows), v.shape[1]), np.float32)
            oof[t][held] = v
        test.append(out["test"])
    test_out = outputs_for(table, splits["test"].rows,
                           *[np.mean([getattr(o, t) for o in test], 0) for t in TASKS])
    return {"validation": outputs_for(table, pool.rows, oof["va"], oof["expr"], oof["au"]),
            "validation_split": pool, "test": test_out}


def baseline(table, keys, splits) -> dict:
    """scikit-learn on the same standardised features; returns val/test outputs."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    X = {s: np.concatenate([table.feats[k][sp.rows].astype(np.float64) for k in keys], 1) for s, sp in splits.items()}
    sc = StandardScaler().fit(X["training"])
    X = {s: sc.transform(x) for s, x in X.items()}
    lb = splits["training"].labels
    out = {s: {} for s in ("validation", "test")}
    m = lb.va_valid
    for j in range(2):
        r = Ridge(alpha=1.0).fit(X["training"][m], lb.va[m, j])
        for s in out:
            out[s].setdefault("va", []).append(np.clip(r.predict(X[s]), -1, 1))
    m = lb.expr_valid
    lr = LogisticRegression(class_weight="balanced", max_iter=500).fit(X["training"][m], lb.expr[m])
    for s in out:
        p = np.zeros((len(X[s]), 8))
        p[:, lr.classes_] = lr.predict_proba(X[s])
        out[s]["expr"] = p
    m = lb.au_valid
    for j in range(lb.au.shape[1]):
        y = lb.au[m, j]
        fit = None if len(np.unique(y)) < 2 else LogisticRegression(class_weight="balanced", max_iter=500).fit(
            X["training"][m], y)  # one fit, both splits predicted
        for s in out:
            p = (np.full(len(X[s]), float(y.mean()) if len(y) else 0.0) if fit is None
                 else fit.predict_proba(X[s])[:, 1])
            out[s].setdefault("au", []).append(p)
    return {s: outputs_for(table, splits[s].rows, np.stack(o["va"], 1), o["expr"], np.stack(o["au"], 1))
            for s, o in out.items()}


def test_decisions(out, labels, values: dict, thr) -> tuple:
    """(row keys "video/frame", final per-task values with AU as 0/1 decisions, the labels as a
    Series) of one system on test: what the paired bootstrap resamples."""
    s = make_series(out, labels, CrossfitConfig(smoothing=False))
    vals = {t: np.asarray(v, np.float64) for t, v in values.items() if v is not None}
    if "au" in vals:
        t = np.full(vals["au"].shape[1], 0.5) if thr is None else np.asarray(thr, np.float64)
        vals["au"] = (vals["au"] >= (t if t.ndim == 2 else t[None])).astype(np.float64)
    keys = np.array([f"{out.videos[v]}/{f}" for v, f in zip(out.video_idx, out.frame)])
    return keys, vals, s


def paired_differences(systems: dict, ref: dict[str, str], n: int = 500, seed: int = 0) -> dict:
    """Per system and task: test score minus the reference system's (`ref[task]`: the stronger
    baseline), with its standard error over `n` resamples of whole test videos (the same
    videos for both: a paired bootstrap). Tells a loss of 0.02 from split noise."""
    from abaw.pipeline.crossfit import Series, task_score

    base_keys, _, base_s = systems[next(iter(ref.values()))]["_dec"]
    pos = {k: i for i, k in enumerate(base_keys)}
    vids = base_s.video_idx
    uniq = np.unique(vids)
    rows_of = [np.flatnonzero(vids == v) for v in uniq]
    rng = np.random.default_rng(seed)
    samples = [np.concatenate([rows_of[i] for i in rng.integers(0, len(uniq), len(uniq))]) for _ in range(n)]
    aligned = {}
    for name, ev in systems.items():
        keys, vals, _ = ev["_dec"]
        idx = np.array([pos.get(k, -1) for k in keys])
        if len(idx) != len(base_keys) or (idx < 0).any():
            continue
        inv = np.empty(len(idx), np.int64)
        inv[idx] = np.arange(len(idx))
        aligned[name] = {t: v[inv] for t, v in vals.items()}  # rows in the reference's order

    def score(vals, t, rows):
        sub = Series(vids[rows], base_s.frame[rows], {}, {k: a[rows] for k, a in base_s.labels.items()}, {})
        return task_score(t, vals[t][rows], sub, np.full(12, 0.5) if t == "au" else None)

    out = {}
    full = np.arange(len(base_keys))
    for name, vals in aligned.items():
        out[name] = {"total_se": float(np.std([sum(score(vals, t, r) or 0 for t in TASKS if t in vals)
                                                for r in samples], ddof=1))}
        for t in TASKS:
            if t not in vals or t not in aligned.get(ref[t], {}):
                continue
            d = [score(vals, t, r) - score(aligned[ref[t]], t, r) for r in samples]
            out[name][t] = {"diff": score(vals, t, full) - score(aligned[ref[t]], t, full),
                            "se": float(np.std(d, ddof=1))}
    return out


def score_test(test_out, labels, pf: PostFit) -> dict:
    s = make_series(test_out, labels, CrossfitConfig(smoothing=False))
    return score_values(apply_to(test_out, pf), s, pf.au_thresholds)


def tool_pp_test(run, test_out, labels) -> tuple[dict, tuple]:
    """Test score with the run's own fitted post-processing (the tool's numbers), and the
    delivered outputs' `test_decisions`."""
    from abaw.pipeline.train.outputs import score_outputs
    from abaw.pipeline.train.postprocess import apply_postprocess

    delivered = apply_postprocess(test_out, run.postprocess)
    thr = run.postprocess.au_thresholds
    sc = score_outputs(delivered, labels, thr)
    dec = test_decisions(test_out, labels, {t: getattr(delivered, t) for t in TASKS}, thr)
    return {"va": sc.va, "expr": sc.expr, "au": sc.au, "total": sc.total}, dec


def evaluate(val_out, test_out, splits, pp_cfg: CrossfitConfig) -> dict:
    cf = crossfit(make_series(val_out, splits["validation"].labels, pp_cfg), pp_cfg,
                  groups=clip_ids(val_out.videos, val_out.video_idx))  # a clip's tracks left out together
    return {"val_raw": cf.raw, "val_optimistic": cf.optimistic, "val_honest": cf.honest,
            "test": score_test(test_out, splits["test"].labels, cf.fit_all), "postprocess": cf.fit_all.__dict__,
            "_dec": test_decisions(test_out, splits["test"].labels, apply_to(test_out, cf.fit_all),
                                   cf.fit_all.au_thresholds)}


def run_heads(d: Path, name: str, flags: list[str], seed: int, table, splits, log: Path) -> dict:
    from abaw.pipeline.train.run import load_run

    out = d / "runs" / f"{name}-s{seed}"
    t = time.perf_counter()
    stamp = out / "bench_flags.json"  # a finished run is reused only for the same flags
    same = stamp.exists() and json.loads(stamp.read_text()) == flags
    if not (out / "result.json").exists() or not same:
        if flags and flags[0] == "@api":  # the python API (knobs without a CLI flag, e.g. arch=linear)
            _train_api(d, out, flags[1:], seed)
        else:
            sh([sys.executable, "-m", "abaw", "train-heads", "--cache", str(d / "cache.zarr"), "--data",
                str(d / "data"), "--out", str(out), "--seed", str(seed), "--device", "cpu", "--threads", "1",
                "--quiet", "--overwrite", "--allow-missing", *flags], log)
        stamp.write_text(json.dumps(flags))
    secs = time.perf_counter() - t
    run = load_run(out)
    val_out = run.val_outputs()
    from abaw.pipeline.train.outputs import align_annotations

    vr, vl = align_annotations(val_out, splits["validation"].ann)
    test_out = run.predict(table, rows=splits["test"].rows)
    tr, tl = align_annotations(test_out, splits["test"].ann)
    res = json.loads((out / "result.json").read_text())
    ev = evaluate(val_out.take(vr), test_out.take(tr), {"validation": Split(None, None, vl),
                                                        "test": Split(None, None, tl)}, FULL_PP)
    # what the tool reports and delivers: its validation score, its honest estimate, its system on test
    ev["val_reported"] = {k: res["val_final"].get(k) for k in (*TASKS, "total")}
    ev["val_honest_pp_only"] = ev["val_honest"]
    if res.get("honest"):
        ev["val_honest"] = {k: res["honest"].get(k) for k in (*TASKS, "total")}
        ev["val_honest_se"] = res["honest"].get("se")
    ev["test_crossfit_pp"] = ev["test"]
    ev["test"], ev["_dec"] = tool_pp_test(run, test_out.take(tr), tl)
    ev.update(seconds=round(secs, 1), epochs_run=res.get("epochs_run"), best_epoch=res.get("best_epoch"),
              flags=flags)
    return ev


def system_test(path: Path, table, splits) -> dict:
    """Test scores of a composed / blended system (`abaw predict --compose PATH`), its own post-processing."""
    from abaw.pipeline.predict.system import load_system, system_outputs
    from abaw.pipeline.train.outputs import align_annotations, score_outputs

    system = load_system((), path)
    out, thr, _ = system_outputs(system, table, "each", rows=splits["test"].rows)
    rows, labels = align_annotations(out, splits["test"].ann)
    scored = out.take(rows)
    sc = score_outputs(scored, labels, thr)
    if thr is not None and np.ndim(thr) == 2:
        thr = np.asarray(thr)[rows]
    dec = test_decisions(scored, labels, {t: getattr(scored, t) for t in TASKS}, thr)
    return {"va": sc.va, "expr": sc.expr, "au": sc.au, "total": sc.total, "_dec": dec}


def _pick(x: dict) -> dict:
    return {k: x.get(k) for k in (*TASKS, "total")}


def run_blend(d: Path, name: str, parts: list[str], seed: int, table, splits) -> dict:
    """`abaw blend` of finished runs of this size/seed (per-task weights, cross-fitted honest score)."""
    from abaw.pipeline.blend import BlendConfig, blend

    t0 = time.perf_counter()
    out = d / "runs" / f"{name}-s{seed}.json"
    res = blend([str(d / "runs" / f"{p}-s{seed}") for p in parts], out, BlendConfig(),
                val_ann=splits["validation"].ann, overwrite=True)
    test = system_test(out, table, splits)
    return {"val_reported": _pick(res.scores["optimistic"]), "val_honest": _pick(res.scores["honest"]),
            "val_honest_se": res.scores["honest"].get("se"), "_dec": test.pop("_dec"), "test": test, "parts": parts,
            "weights": {t: [m["weight"] for m in e["members"]] for t, e in res.tasks.items()},
            "seconds": round(time.perf_counter() - t0, 1)}


def run_search(d: Path, name: str, flags: list[str], seed: int, table, splits, log: Path) -> dict:
    """`abaw search ... --compose best-per-task` (or the `--compose` in FLAGS, e.g. blend; the linear
    config is always in it); the composed system."""
    out = d / "runs" / f"search-{name}-s{seed}"
    t0 = time.perf_counter()
    compose = [] if "--compose" in flags else ["--compose", "best-per-task"]
    sh([sys.executable, "-m", "abaw", "search", "--cache", str(d / "cache.zarr"), "--data", str(d / "data"),
        "--out", str(out), "--seed", str(seed), *compose, "--quiet",
        "--set", "allow_missing=true", *([] if "--seeds" in flags else ["--set", f"seed={seed}"]),
        "--set", "device=cpu", *flags], log)
    comp = json.loads((out / "composed.json").read_text())
    se = None
    if comp.get("mode") == "blend":
        val, hon = dict(comp["scores"]["optimistic"]), dict(comp["scores"]["honest"])
        se = hon.get("se")
        chosen = {t: {m["source"]: m["weight"] for m in e["members"]} for t, e in comp["tasks"].items()}
    else:
        val = {t: c["score"] for t, c in comp["tasks"].items()}
        hon = {t: c.get("honest") for t, c in comp["tasks"].items()}
        val["total"], hon["total"] = comp["total"], comp.get("honest")
        chosen = {t: c["config"] for t, c in comp["tasks"].items()}
    test = system_test(out, table, splits)
    ens = comp.get("scores", {}).get("ensemble")  # repeated k-fold: honest extrapolated to predict's average
    return {"val_reported": _pick(val), "val_honest": _pick(hon), "val_honest_se": se, "_dec": test.pop("_dec"),
            "test": test, **({"val_honest_ensemble": {**_pick(ens), "views": _pick(ens["views"]),
                                                      "models": ens["models"]}} if ens else {}),
            "chosen": chosen, "flags": flags, "seconds": round(time.perf_counter() - t0, 1)}


def _train_api(d: Path, out: Path, sets: list[str], seed: int) -> None:
    from abaw.pipeline.train.config import TrainConfig
    from abaw.pipeline.train import train

    kw: dict = {}
    for s in sets:
        k, v = s.split("=", 1)
        f = TrainConfig.__dataclass_fields__[k]
        kw[k] = v if f.type in ("str", str) else type(getattr(TrainConfig(), k))(v)
    cfg = TrainConfig(seed=seed, device="cpu", threads=1, allow_missing=True, **kw)
    train(cfg, d / "cache.zarr", read_annotations(d / "data" / "training_set_annotations.txt"),
          read_annotations(d / "data" / "validation_set_annotations.txt"), out, overwrite=True, progress=False)


def f3(x) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def table_lines(rows: list[dict]) -> list[str]:
    hdr = (f"{'size':6} {'seed':>4} {'system':24} {'val rep':>7} {'honest':>7} {'test':>7} {'gap':>6} "
           f"{'VA':>6} {'EXPR':>6} {'AU':>6}  {'rVA':>5} {'rEX':>5} {'rAU':>5} {'testX':>6} {'min':>4}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        t = r["test"]
        lines.append(f"{r['size']:6} {r['seed']:>4} {r['system'][:24]:24} {f3(r['val_reported']['total']):>7} "
                     f"{f3(r['val_honest']['total']):>7} {f3(t['total']):>7} "
                     f"{r['val_honest']['total'] - t['total']:+6.3f} {f3(t['va']):>6} {f3(t['expr']):>6} "
                     f"{f3(t['au']):>6}  " + " ".join(f"{r['ratio'][k]:5.2f}" for k in TASKS)
                     + f" {f3(r.get('test_crossfit_pp', {}).get('total')):>6} {r.get('seconds', 0) / 60:4.1f}")
    return lines


def diff_lines(rows: list[dict]) -> list[str]:
    """Test score minus the stronger baseline per task, ± the paired bootstrap standard error."""
    lines = ["test - stronger baseline per task (± SE, paired bootstrap over test videos; * beyond 2 SE); "
             "z: (honest - test) / sqrt(se_honest^2 + se_test^2), the SEs over validation / test videos:"]
    for r in rows:
        if r["system"].startswith("baseline") or not r.get("test_diff"):
            continue
        parts = []
        sh, st = r.get("val_honest_se"), r.get("test_se")
        if sh and st:
            z = (r["val_honest"]["total"] - r["test"]["total"]) / (sh ** 2 + st ** 2) ** 0.5
            parts.append(f"se honest {sh:.3f} test {st:.3f} z {z:+.2f}")
        for t in TASKS:
            d = r["test_diff"].get(t)
            if d:
                star = "*" if abs(d["diff"]) > 2 * d["se"] else " "
                parts.append(f"{t.upper()} {d['diff']:+.3f} ± {d['se']:.3f}{star}")
        lines.append(f"  {r['size']:6} {r['seed']:>4} {r['system'][:24]:24} " + "   ".join(parts))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="small")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--profile", default="s-aff-wild2", help="s-aff-wild2 (sparse labels, the default) | dense")
    ap.add_argument("--config", action="append", default=[],
                    help="name=train-heads flags (repeat); 'default' = no flags; '@api k=v ...' = TrainConfig fields")
    ap.add_argument("--no-linear", action="store_true", help="skip the built-in linear head")
    ap.add_argument("--search", action="append", default=[],
                    help="NAME=FLAGS: `abaw search FLAGS --compose best-per-task` (or FLAGS' own --compose, e.g. "
                         "'ens=--seeds 0,7,8 --compose blend'; its composed system is a row)")
    ap.add_argument("--blend", action="append", default=[],
                    help="NAME=A+B: `abaw blend` of the runs of configs A and B (after they are trained)")
    ap.add_argument("--kfold-baseline", type=int, default=0, metavar="K",
                    help="also the scikit-learn baseline trained as `abaw search --folds K` trains (K fits on "
                         "train + val folds, post-processing fitted out-of-fold, test outputs averaged); its folds "
                         "are frame-only (`search --no-stratify`) unless --kfold-stratify")
    ap.add_argument("--kfold-stratify", action="store_true",
                    help="the --kfold-baseline's folds balanced on the labels too, as `abaw search --folds K` splits by default")
    ap.add_argument("--test-videos", type=int, default=None, metavar="N",
                    help="N test tracks instead of the size's own (the same training and validation tracks; rows "
                         "are labelled <size>/test<N>): a larger test split measures honest - test more precisely")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "work"))
    ap.add_argument("--out", default=None, help="JSON path (default bench/out/accuracy-<profile>.json)")
    a = ap.parse_args(argv)
    configs = {}
    for c in a.config or ["default"]:
        name, _, flags = c.partition("=")
        configs[name] = shlex.split(flags)
    if not a.no_linear:  # the search's built-in baseline config, as train-heads flags
        from abaw.pipeline.search.runner import baseline_overrides
        from abaw.pipeline.train.config import TrainConfig

        configs.setdefault("linear", [x for k, v in baseline_overrides(TrainConfig()).items()
                                      for x in (f"--{k.replace('_', '-')}", str(v))])
    pflags, profile = synth_profile(a.profile)
    work = Path(a.work) / profile
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    out_path = Path(a.out) if a.out else ROOT / "bench" / "out" / f"accuracy-{profile}.json"
    rows: list[dict] = []
    for size in a.sizes.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            d = prepare(work, size, seed, pflags, log, profile, a.test_videos)
            label = size if a.test_videos is None else f"{size}/test{a.test_videos}"
            table, keys, splits = load_splits(d)
            n_train = len(splits["training"].rows)
            base = baseline(table, keys, splits)
            b = evaluate(base["validation"], base["test"], splits, BASELINE_PP)
            b["val_reported"] = b["val_optimistic"]
            bf = evaluate(base["validation"], base["test"], splits, FULL_PP)
            bf["val_reported"] = bf["val_optimistic"]
            systems = {"baseline (box9)": b, "baseline (crossfit pp)": bf}
            if a.kfold_baseline:
                kb = baseline_kfold(table, keys, splits, a.kfold_baseline, seed, a.kfold_stratify)
                bk = evaluate(kb["validation"], kb["test"], {"validation": kb["validation_split"],
                                                             "test": splits["test"]}, FULL_PP)
                bk["val_reported"] = bk["val_optimistic"]
                systems[f"baseline {a.kfold_baseline}-fold"] = bk
            for name, flags in configs.items():
                systems[name] = run_heads(d, name, flags, seed, table, splits, log)
            for spec in a.search:
                name, _, flags = spec.partition("=")
                systems[f"search {name}"] = run_search(d, name, shlex.split(flags), seed, table, splits, log)
            for spec in a.blend:
                name, _, parts = spec.partition("=")
                systems[name] = run_blend(d, name, parts.split("+"), seed, table, splits)
            bases = {n: ev for n, ev in systems.items() if n.startswith("baseline")}
            ref = {k: max(bases, key=lambda n: bases[n]["test"][k] or 0) for k in TASKS}  # the strongest per task
            best_base = {k: bases[ref[k]]["test"][k] or 0 for k in TASKS}
            diffs = paired_differences(systems, ref)
            for name, ev in systems.items():
                ev.pop("_dec", None)
                ratio = {k: (ev["test"][k] / best_base[k]) if best_base.get(k) else float("nan") for k in TASKS}
                diff = dict(diffs.get(name, {}))
                ev["test_se"] = diff.pop("total_se", None)
                rows.append({"size": label, "seed": seed, "train_frames": n_train, "system": name, "ratio": ratio,
                             "test_diff": diff, **ev})
            here = [r for r in rows if r["size"] == label and r["seed"] == seed]
            print("\n".join(table_lines(here) + diff_lines(here)), flush=True)
    print("\nval rep: validation as the tool reports it (optimistic); honest: the tool's honest estimate (heads: "
          "epoch + post-processing fitted on other validation folds; baselines: post-processing cross-fitted "
          "leave-one-clip-out); test: the system as delivered (heads: the run's own post-processing; baselines: "
          "fitted on all validation); gap = honest - test; r*: test ratio vs the stronger baseline per task; "
          "testX: heads with the cross-fit module's post-processing; min: training minutes")
    print("\n".join(table_lines(rows)))
    write_json(out_path, {"profile": profile, "requested_profile": a.profile, "sizes": SIZES,
                          "test_videos": a.test_videos, "rows": rows,
                          "configs": configs})
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
