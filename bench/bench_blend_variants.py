"""Re-blend the k-fold searches of `bench_accuracy.py` with other `abaw blend` settings.

    python bench/bench_blend_variants.py bench/out/work/s-aff-wild2/small-{3,6,7} --variant au_weights=per-au

For each benchmark folder (one size x seed, after `bench_accuracy.py --search 'kf=--folds 5
--compose blend ...'`): the search's members (every config, out-of-fold) are blended again with
the default `BlendConfig` and with each `--variant` (BlendConfig fields), nothing retrained; prints
per system the validation scores (optimistic, honest) and the test score of the written blend
(`abaw predict --compose`, its own post-processing), per task. The test split is only scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from abaw.data.labels import TASKS  # noqa: E402
from abaw.pipeline.blend import BlendConfig, Member, write_blend  # noqa: E402
from bench_accuracy import load_splits, system_test  # noqa: E402


def search_members(search: Path) -> list[Member]:
    """The members of a search's composed blend (each config's runs and the tasks it serves)."""
    doc = json.loads((search / "composed.json").read_text())
    mem: dict[str, tuple[tuple[Path, ...], set[str]]] = {}
    for t, e in doc["tasks"].items():
        for m in e["members"]:
            mem.setdefault(m["source"], (tuple((search / r).resolve() for r in m["runs"]), set()))[1].add(t)
    return [Member(n, runs, tuple(t for t in TASKS if t in ts)) for n, (runs, ts) in mem.items()]


def parse_variant(text: str) -> tuple[str, BlendConfig]:
    types = {f.name: type(getattr(BlendConfig(), f.name)) for f in fields(BlendConfig)}
    kw = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k not in types:
            raise SystemExit(f"--variant: {k!r} is not a BlendConfig field ({', '.join(types)})")
        kw[k] = v.lower() in ("1", "true") if types[k] is bool else types[k](v)
    return text, replace(BlendConfig(), **kw).validate()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="bench_accuracy work folders, e.g. bench/out/work/s-aff-wild2/small-3")
    ap.add_argument("--search", default="kf", help="the search's name in bench_accuracy (--search NAME=...)")
    ap.add_argument("--variant", action="append", default=[], help="BlendConfig fields, e.g. au_weights=per-au")
    a = ap.parse_args(argv)
    variants = [("default", BlendConfig()), *map(parse_variant, a.variant)]
    print(f"{'folder':14} {'variant':24} {'val':>6} {'honest':>6} {'test':>6}   per task honest / test")
    for folder in map(Path, a.folders):
        seed = folder.name.rsplit("-", 1)[1]
        search = folder / "runs" / f"search-{a.search}-s{seed}"
        members = search_members(search)
        table, _, splits = load_splits(folder)
        for name, cfg in variants:
            out = search / f"variant-{name.replace('=', '-').replace(',', '_')}.json"
            res = write_blend(members, out, cfg, None, [m.name for m in members])
            test = system_test(out, table, splits)
            hon = res.scores["honest"]
            print(f"{folder.parent.name[:5] + '/' + folder.name:14} {name[:24]:24} {res.scores['optimistic']['total']:6.3f} "
                  f"{hon['total']:6.3f} {test['total']:6.3f}   "
                  + "  ".join(f"{t.upper()} {hon[t]:.4f}/{test[t]:.4f}" for t in TASKS), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
