"""The README's accuracy table from `bench/bench_accuracy.py` JSON files.

    python bench/accuracy_table.py bench/out/acc-small.json bench/out/acc-large.json [--systems a,b]

One markdown row per (profile, size, seed, system): validation as reported, the honest
estimate ± its standard error over validation videos, test ± its standard error over test
videos, z = (honest - test) / sqrt(se_h^2 + se_t^2), the per-task test scores, and per task
test - the strongest baseline ± the paired bootstrap standard error (* beyond 2 SE).
Then one summary line per system over all its runs: runs with every task >= 1.00 (at two
decimals), the mean of honest - test ± its standard error over the runs (the estimate's
bias), runs within 0.05 of test, and how many would be within 0.05 if the estimate were
exactly unbiased with the standard errors measured (sum over runs of
P(|N(0, se_h^2 + se_t^2)| <= 0.05)): what the 0.05 target can be at these split sizes.
Then per (profile, size) and system, over its seeds: the mean test ratio per task to the
strongest baseline ± its standard error over the seeds, and the mean honest - test.
Rows repeated across files (the same size, seed and system) are shown once (the last file wins).

`--extrapolated` adds, for each row with one (a repeated k-fold search: `abaw search --repeats`),
a row "<system> extrapolated" whose honest estimate is the search's extrapolation to the
number of models `abaw predict` averages (README: Folds); its SE is the honest estimate's.

`--plot PATH` also draws them (PNG): per task, each run's test - strongest baseline with its
+-2 SE bar (paired bootstrap), and honest estimate against test with +-1 SE bars and the
+-0.05 band; `--plot-systems` picks the systems drawn (default: every non-baseline system).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("va", "expr", "au")


def fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def row_line(profile: str, r: dict) -> str:
    h, t = r["val_honest"]["total"], r["test"]["total"]
    sh, st = r.get("val_honest_se"), r.get("test_se")
    z = (h - t) / (sh ** 2 + st ** 2) ** 0.5 if sh and st else None
    diffs = []
    for k in TASKS:
        d = (r.get("test_diff") or {}).get(k)
        diffs.append("–" if not d else f"{d['diff']:+.3f} ± {d['se']:.3f}" + ("*" if abs(d["diff"]) > 2 * d["se"] else ""))
    honest = fmt(h) + (f" ± {sh:.3f}" if sh else "")
    test = fmt(t) + (f" ± {st:.3f}" if st else "")
    return (f"| {profile} | {r['size']} | {r['seed']} | {r['train_frames']:,} | {r['system']} | "
            f"{fmt(r['val_reported']['total'])} | {honest} | {test} | {fmt(z, '+.2f')} | "
            + " / ".join(fmt(r["test"][k]) for k in TASKS) + " | " + " / ".join(f"{r['ratio'][k]:.2f}" for k in TASKS)
            + " | " + " / ".join(diffs) + " |")


def summary_lines(rows: list[dict]) -> list[str]:
    """Per system: wins on every task, the honest estimate's mean gap to test, runs within 0.05."""
    from math import erf, sqrt

    out = ["| system | runs | every task ≥ 1.00 | mean honest − test ± se | within 0.05 | expected within 0.05 "
           "if unbiased |", "| --- " * 6 + "|"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["system"], []).append(r)
    for name, rs in by.items():
        wins = sum(all(round(r["ratio"][k], 2) >= 1.0 for k in TASKS) for r in rs)
        gaps = [r["val_honest"]["total"] - r["test"]["total"] for r in rs]
        n = len(gaps)
        mean = sum(gaps) / n
        se = (sum((g - mean) ** 2 for g in gaps) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else None
        near = sum(abs(g) <= 0.05 for g in gaps)
        known = all(r.get("val_honest_se") and r.get("test_se") for r in rs)
        expect = (sum(erf(0.05 / sqrt(2 * (r["val_honest_se"] ** 2 + r["test_se"] ** 2))) for r in rs)
                  if known else None)
        out.append(f"| {name} | {n} | {wins} | {mean:+.3f}" + (f" ± {se:.3f}" if se else "") + f" | {near} | "
                   + ("–" if expect is None else f"{expect:.1f}") + " |")
    return out


def _mean_se(xs: list[float], spec: str = ".3f") -> str:
    n = len(xs)
    m = sum(xs) / n
    se = (sum((x - m) ** 2 for x in xs) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else None
    return format(m, spec) + (f" ± {se:.3f}" if se is not None else "")


def group_lines(keyed: list[tuple[str, dict]]) -> list[str]:
    """Per (profile, size, system): seeds, mean test ratio per task ± se over seeds, mean honest - test."""
    out = ["| profile | size | system | seeds | mean ratio VA | mean ratio EXPR | mean ratio AU | mean honest − test |",
           "| --- " * 8 + "|"]
    by: dict[tuple, list[dict]] = {}
    for profile, r in keyed:
        by.setdefault((profile, r["size"], r["system"]), []).append(r)
    for (profile, size, name), rs in by.items():
        gaps = [r["val_honest"]["total"] - r["test"]["total"] for r in rs]
        out.append(f"| {profile} | {size} | {name} | {','.join(str(r['seed']) for r in rs)} | "
                   + " | ".join(_mean_se([r["ratio"][k] for r in rs]) for k in TASKS)
                   + f" | {_mean_se(gaps, '+.3f')} |")
    return out


def plot(path: str, keyed: list[tuple[str, dict]], systems: list[str] | None = None) -> None:
    """The figure of `--plot` (see the module docstring)."""
    from abaw.plots import pyplot, save_png

    plt = pyplot()

    names = systems or list(dict.fromkeys(r["system"] for _, r in keyed if not r["system"].startswith("baseline")))
    runs = list(dict.fromkeys((p, r["size"], r["seed"]) for p, r in keyed))
    labels = [f"{'sparse' if p == 's-aff-wild2' else p} {size} s{seed}" for p, size, seed in runs]
    fig, axes = plt.subplots(1, 4, figsize=(20, 0.32 * len(runs) + 2.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, name in enumerate(names):
        rs = {(p, r["size"], r["seed"]): r for p, r in keyed if r["system"] == name}
        off = (j - (len(names) - 1) / 2) * 0.8 / max(len(names), 1)
        for i, task in enumerate(TASKS):
            ys, xs, es = [], [], []
            for y, run in enumerate(runs):
                d = (rs.get(run, {}).get("test_diff") or {}).get(task)
                if d:
                    ys.append(y + off), xs.append(d["diff"]), es.append(2 * d["se"])
            axes[i].errorbar(xs, ys, xerr=es, fmt="o", ms=4, color=colours[j % len(colours)], label=name)
        hx, hy, he, te = [], [], [], []
        for run, r in rs.items():
            hx.append(r["test"]["total"]), hy.append(r["val_honest"]["total"])
            he.append(r.get("val_honest_se") or 0), te.append(r.get("test_se") or 0)
        axes[3].errorbar(hx, hy, xerr=te, yerr=he, fmt="o", ms=4, color=colours[j % len(colours)], label=name)
    for i, task in enumerate(TASKS):
        ax = axes[i]
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(runs)), labels if i == 0 else [""] * len(runs))
        ax.invert_yaxis()
        ax.set_title(f"{task.upper()}: test − strongest baseline (± 2 SE)")
        ax.grid(axis="x", alpha=0.3)
    lo = min(min(ax.get_xlim()[0], ax.get_ylim()[0]) for ax in axes[3:])
    hi = max(max(ax.get_xlim()[1], ax.get_ylim()[1]) for ax in axes[3:])
    ax = axes[3]
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo - 0.05, hi - 0.05], [lo + 0.05, hi + 0.05], color="0.85", label="± 0.05")
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_xlabel("test P_MTL (± SE)"), ax.set_ylabel("honest estimate (± SE)")
    ax.set_title("honest estimate vs test")
    ax.legend(fontsize=8, loc="upper left")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--systems", help="comma-separated system names to keep (default: all)")
    ap.add_argument("--plot", metavar="PNG", help="also draw the runs (see above)")
    ap.add_argument("--plot-systems", help="comma-separated systems to draw (default: every non-baseline one)")
    ap.add_argument("--extrapolated", action="store_true",
                    help="also a row with the extrapolated honest estimate where a search has one (see above)")
    a = ap.parse_args(argv)
    keep = set(a.systems.split(",")) if a.systems else None
    rows: dict[tuple, tuple[str, dict]] = {}
    for f in a.files:
        d = json.load(open(f))
        for r in d["rows"]:
            extra = ([{**r, "system": f"{r['system']} extrapolated", "val_honest": r["val_honest_ensemble"]}]
                     if a.extrapolated and r.get("val_honest_ensemble") else [])
            for x in [r, *extra]:
                if keep is None or r["system"] in keep or x["system"] in keep:
                    rows[(d["profile"], x["size"], x["seed"], x["system"])] = (d["profile"], x)
    print("| profile | size | seed | train frames | system | val (reported) | honest ± se | test ± se | z | "
          "test VA / EXPR / AU | ÷ strongest baseline | test − strongest baseline ± se (paired) |")
    print("| --- " * 12 + "|")
    order = {"s-aff-wild2": 0, "dense": 1}
    ordered = sorted(rows, key=lambda k: (order.get(k[0], 2), k[1] != "small", k[2]))
    for key in ordered:
        print(row_line(*rows[key]))
    print()
    print("\n".join(summary_lines([rows[k][1] for k in ordered])))
    print()
    print("\n".join(group_lines([rows[k] for k in ordered])))
    if a.plot:
        plot(a.plot, [rows[k] for k in ordered], a.plot_systems.split(",") if a.plot_systems else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
