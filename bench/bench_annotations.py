"""Benchmark: parse an ABAW annotation file the size of train+val (~170k lines).

    python bench/bench_annotations.py [--lines 170000]

Prints the parse time and lines/s. Target: well under 2 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from abaw.data.annotations import read_annotations
from abaw.data.labels import ANNOTATION_HEADER


def make_file(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per_video = 550
    lines = [ANNOTATION_HEADER]
    for i in range(n):
        v, f = divmod(i, per_video)
        va = "-5,-5" if rng.random() < 0.2 else f"{rng.uniform(-1, 1):.6f},{rng.uniform(-1, 1):.6f}"
        e = int(rng.integers(-1, 8))
        au = ",".join(["-1"] * 12) if rng.random() < 0.25 else ",".join(map(str, rng.integers(0, 2, 12)))
        lines.append(f"{v}-30-1280x720/{f + 1:05d}.jpg,{va},{e},{au}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=170_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "training_set_annotations.txt"
        make_file(p, args.lines)
        size_mb = p.stat().st_size / 1e6
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ann = read_annotations(p)
            times.append(time.perf_counter() - t0)
        best = min(times)
        print(f"annotation parse: {args.lines} lines ({size_mb:.1f} MB, {len(ann.videos)} videos) "
              f"best {best:.3f} s of {args.repeat} = {args.lines / best:,.0f} lines/s (target < 2 s)")


if __name__ == "__main__":
    main()
