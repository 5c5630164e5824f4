"""Benchmark: loading a feature cache into RAM vs `np.load` of the same bytes (issue 14 §3).

Builds a store of s-Aff-Wild2-like size (default 300 videos, ~170k frames, 3 backbone keys
x 768-d float16, ~0.75 GiB) with realistic feature values (GELU of correlated Gaussian
activations, as a ViT's pooled features look), then prints:

- the compression ratio of zstd / blosc / none on those values (why the cache stores
  features uncompressed, with a crc32c per chunk),
- `load_features` time and GiB/s for this version's store and for a legacy store
  (zstd, no checksums, as written before), `np.load` GiB/s of the same bytes from the
  page cache, and the ratios.

    python bench/bench_cache.py                     # full size (needs ~2 GiB of disk)
    python bench/bench_cache.py --videos 30 --frames 17000   # quick
    python bench/bench_cache.py --dir /tmp/bc --reuse --no-legacy   # rerun on the same store

It also prints the floor of the layout: every feature chunk file read into one table
(one `readv` each, one thread, no metadata, no checksum), and crc32c over that table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw.cache.store import FeatureStore, load_features

FP = {"spec": "bench:gelu", "dim": 0, "preprocess": {}, "weights_sha256": "bench"}


def features(rng: np.random.Generator, n: int, dim: int, mix: np.ndarray) -> np.ndarray:
    """GELU(correlated Gaussian) activations in float16: ~17% near zero, heavy right tail."""
    z = (rng.standard_normal((n, dim), dtype=np.float32) @ mix) + rng.standard_normal(dim, dtype=np.float32)
    return (0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z ** 3)))).astype(np.float16)


def lengths(rng: np.random.Generator, videos: int, frames: int) -> list[int]:
    w = rng.lognormal(0, 0.6, videos)
    return [max(8, int(x)) for x in w / w.sum() * frames]


def compression(sample: np.ndarray) -> dict[str, float]:
    import numcodecs

    raw = sample.tobytes()
    out = {"none": 1.0}
    for name, codec in [("zstd-1", numcodecs.Zstd(level=1)), ("zstd-5", numcodecs.Zstd(level=5)),
                        ("blosc-lz4-shuffle", numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE, typesize=2)),
                        ("blosc-zstd-bitshuffle", numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE,
                                                                   typesize=2))]:
        t = time.perf_counter()
        enc = codec.encode(raw)
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        codec.decode(enc)
        t_dec = time.perf_counter() - t
        out[name] = len(raw) / len(enc)
        print(f"  {name:24s} ratio {len(raw) / len(enc):5.2f}  encode {len(raw) / t_enc / 2**30:5.2f} GiB/s  "
              f"decode {len(raw) / t_dec / 2**30:5.2f} GiB/s")
    return out


def write_legacy(path: Path, vids: list[str], lens: list[int], keys: list[str], feats_of) -> None:
    """A store as written before checksums: zstd-1 chunks, no done-markers."""
    import zarr
    from zarr.codecs import ZstdCodec

    g = zarr.open_group(str(path), mode="w")
    g.attrs.update({"abaw_cache": 1, "layout": "videos/<video>"})
    vg = g.create_group("videos")
    for v, n in zip(vids, lens):
        gv = vg.create_group(v)
        fr = np.arange(1, n + 1, dtype=np.int32)
        for name, arr in (("frame", fr), ("timestamp", fr / 30.0), ("face", np.ones(n, bool))):
            a = gv.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape,
                                compressors=(ZstdCodec(level=1),))
            a[...] = arr
        gv.attrs.update({"n_frames": n, "n_faces": n})
        fg = gv.create_group("feat")
        for k in keys:
            f = feats_of(v, k)
            a = fg.create_array(k, shape=f.shape, dtype="float16", chunks=(min(n, 16384), f.shape[1]),
                                compressors=(ZstdCodec(level=1),))
            a[...] = f
            a.attrs["fingerprint"] = {**FP, "dim": f.shape[1]}


def _threads() -> int:
    from abaw.cache import store

    return store.LOAD_THREADS or (os.cpu_count() or 1)


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ceiling(store: Path) -> tuple[float, float]:
    """Seconds to read every feature chunk file into one fresh table (no metadata, no
    checksum), and to crc32c that table."""
    import google_crc32c

    files = sorted(str(p) for p in store.glob("videos/*/feat/*/c/*/*"))
    sizes = [os.stat(f).st_size for f in files]
    t = time.perf_counter()
    buf = np.empty(sum(sizes), np.uint8)
    off = 0
    for f, n in zip(files, sizes):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.readv(fd, [buf[off:off + n]])
        finally:
            os.close(fd)
        off += n
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    google_crc32c.value(buf)
    return t_read, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--frames", type=int, default=170_000)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=5, help="best of N loads (interleaved with np.load)")
    ap.add_argument("--dir", help="where to build the stores (default: a temporary folder, removed after)")
    ap.add_argument("--no-legacy", action="store_true", help="skip the legacy (zstd) store")
    ap.add_argument("--reuse", action="store_true",
                    help="with --dir: keep a store already there from a run with the same sizes")
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((a.dim, a.dim), dtype=np.float32) / np.sqrt(a.dim)).astype(np.float32)
    lens = lengths(rng, a.videos, a.frames)
    vids = [f"v{i:04d}" for i in range(a.videos)]
    keys = [f"key{j}" for j in range(a.keys)]
    base = {v: features(np.random.default_rng(i), lens[i], a.dim, mix) for i, v in enumerate(vids)}

    def feats_of(v: str, k: str) -> np.ndarray:  # distinct bytes per key without recomputing
        j = keys.index(k)
        return np.roll(base[v], j, axis=1)

    total = sum(lens) * a.dim * a.keys * 2
    print(f"store: {a.videos} videos, {sum(lens):,} frames, {a.keys} keys x {a.dim}-d float16 = "
          f"{total / 2**30:.3f} GiB; {os.cpu_count()} CPUs")
    print("compression of the feature values (16 MiB sample):")
    sample = np.concatenate([base[v] for v in vids])[: (16 << 20) // (2 * a.dim)]
    compression(sample)

    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        new = root / "new.zarr"
        npy = root / "same_bytes.npy"
        sizes = f"{a.videos} {a.frames} {a.keys} {a.dim}"
        stamp = root / "sizes.txt"  # what the kept store was built with
        if a.reuse and a.dir and stamp.exists() and stamp.read_text() == sizes and npy.exists():
            print(f"reusing the store in {new}")
        else:
            shutil.rmtree(new, ignore_errors=True)
            stamp.unlink(missing_ok=True)
            t = time.perf_counter()
            with FeatureStore(new, "a") as fs:
                for v, n in zip(vids, lens):
                    fr = np.arange(1, n + 1)
                    fs.write_video(v, fr, fr / 30.0, np.ones(n, bool), {})
                    for k in keys:
                        fs.write_features(v, k, feats_of(v, k), {**FP, "dim": a.dim})
            print(f"wrote the store in {time.perf_counter() - t:.1f} s")
            np.save(npy, np.concatenate([feats_of(v, k) for k in keys for v in vids]))
            stamp.write_text(sizes)
        gib = total / 2**30
        # interleaved, best of N each: on a shared machine both see the same load
        t_np = t_new = t_raw = t_crc = float("inf")
        for _ in range(a.repeat):
            t_np = min(t_np, timed(lambda: np.load(npy), 1))
            t_new = min(t_new, timed(lambda: load_features(new, keys), 1))
        for _ in range(a.repeat):  # after, not interleaved: it would change the others' memory state
            t_raw, t_crc = (min(x, y) for x, y in zip((t_raw, t_crc), ceiling(new)))
        print(f"np.load of the same bytes: {t_np:.3f} s = {gib / t_np:.2f} GiB/s")
        print(f"floor of the layout: the feature chunk files read into one table {t_raw:.3f} s "
              f"(ratio to np.load {t_np / t_raw:.2f}); crc32c of the table {t_crc:.3f} s")
        print(f"load_features (this version: uncompressed + crc32c, one task per video on {_threads()} threads): "
              f"{t_new:.3f} s = {gib / t_new:.2f} GiB/s, ratio to np.load {t_np / t_new:.2f}")
        if not a.no_legacy:
            old = root / "legacy.zarr"
            shutil.rmtree(old, ignore_errors=True)
            write_legacy(old, vids, lens, keys, feats_of)
            t_old = timed(lambda: load_features(old, keys), 2)
            print(f"load_features (legacy store: zstd-1, no checksums): {t_old:.3f} s = {gib / t_old:.2f} GiB/s, "
                  f"ratio to np.load {t_np / t_old:.2f}")
        t = load_features(new, keys)
        assert all(np.array_equal(t.feats[k][t.video_slice(v)], feats_of(v, k)) for k in keys for v in vids[:3])
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
