"""HDF5 export and import of the feature cache (`abaw cache export/import --format hdf5`).

Export layout (one file; read it with h5py or any HDF5 tool):

    /                         attrs: abaw_export=1, abaw_version, keys (JSON list)
    /<video>/                 one group per video; attrs: attrs (the cache video attrs, JSON)
        frame      int32   [N]    1-based frame numbers
        timestamp  float64 [N]
        face       bool    [N]
        box, landmarks, score     (when the cache has them)
        feat/<key> float16 [N, D] attrs: fingerprint (JSON)

Import accepts that layout (a lossless round trip) and the layouts public ABAW code
writes, with features under a cache key you choose:

- a group per video holding one 2-D features dataset (or the one named by `dataset`),
  with frame numbers from a sibling `frame`/`frames`/`frame_ids`/`index` dataset or
  from image names (`image`/`images`/`names`/`paths`); else frames are 1..N;
- a 2-D dataset per video at the top level (frames 1..N);
- a group per video with one 1-D dataset per image, named by frame (`00001.jpg`,
  `00001`), i.e. `f["<video>/<00001>.jpg"]`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from abaw.cache.store import OPTIONAL_ARRAYS, FeatureStore
from abaw.errors import AbawError

FRAME_NAMES = ("frame", "frames", "frame_id", "frame_ids", "frame_idx", "frame_index", "index")
NAME_NAMES = ("image", "images", "name", "names", "path", "paths", "file", "files", "img_names")
EXTRA = ("score",)
_FRAME_RE = re.compile(r"^(\d+)(\.[A-Za-z]+)?$")


def export_hdf5(store: str | os.PathLike | FeatureStore, out: str | os.PathLike,
                keys: Iterable[str] | None = None, videos: Iterable[str] | None = None,
                compression: str | None = None) -> dict[str, int]:
    """Write the cache (or chosen backbones/videos) into one HDF5 file, atomically."""
    import h5py

    from abaw import __version__

    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, "r")
    out = Path(out)
    vids = fs.videos() if videos is None else list(videos)
    want = None if keys is None else list(keys)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    n_arrays = 0
    all_keys: set[str] = set()
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["abaw_export"] = 1
            f.attrs["abaw_version"] = __version__
            for v in vids:
                idx = fs.read_index(v)
                g = f.create_group(v)
                g.attrs["attrs"] = json.dumps(idx.attrs)
                g.create_dataset("frame", data=idx.frame)
                g.create_dataset("timestamp", data=idx.timestamp)
                g.create_dataset("face", data=idx.face)
                for name in OPTIONAL_ARRAYS + EXTRA:
                    a = fs.read_array(v, name)
                    if a is not None:
                        g.create_dataset(name, data=a)
                fg = g.create_group("feat")
                for k in fs.feature_keys(v):
                    if want is not None and k not in want:
                        continue
                    d = fg.create_dataset(k, data=fs.read_features(v, k), compression=compression)
                    d.attrs["fingerprint"] = json.dumps(fs.fingerprint(v, k))
                    all_keys.add(k)
                    n_arrays += 1
            missing = sorted(set(want or []) - all_keys)
            if missing:
                raise AbawError(f"{fs.path}: no features {missing} to export")
            f.attrs["keys"] = json.dumps(sorted(all_keys))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"videos": len(vids), "arrays": n_arrays}


def _frame_of(name: str) -> int | None:
    base = os.path.basename(name.strip().rstrip("/"))
    m = _FRAME_RE.match(base)
    return int(m.group(1)) if m else None


def _decode(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _generic_entries(f, dataset: str | None, path: str) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(video, frames, features, how frames were found) for each recognised video."""
    import h5py

    out = []
    for name, obj in f.items():
        if isinstance(obj, h5py.Dataset):
            if dataset is None and obj.ndim == 2:
                feats = obj[()]
                out.append((name, np.arange(1, len(feats) + 1, dtype=np.int32), feats, "assumed 1..N"))
            continue
        if not isinstance(obj, h5py.Group):
            continue
        children = {k: v for k, v in obj.items() if isinstance(v, h5py.Dataset)}
        if dataset is not None:
            if dataset not in children:
                raise AbawError(f"{path}: group {name!r} has no dataset {dataset!r} (has {sorted(children)[:8]})")
            feat_name = dataset
        else:
            two_d = [k for k, v in children.items() if v.ndim == 2 and v.dtype.kind == "f"]
            feat_name = two_d[0] if len(two_d) == 1 else None
            if len(two_d) > 1:
                raise AbawError(f"{path}: group {name!r} holds several 2-D datasets {two_d[:6]}; choose one "
                                "with --dataset")
        if feat_name is not None:
            feats = children[feat_name][()]
            if feats.ndim != 2:
                raise AbawError(f"{path}: {name}/{feat_name} is not a 2-D [frames, dim] dataset")
            frames, how = None, "assumed 1..N"
            for fn in FRAME_NAMES:
                if fn in children and children[fn].ndim == 1 and children[fn].dtype.kind in "iu":
                    frames, how = children[fn][()].astype(np.int64), f"from {fn}"
                    break
            if frames is None:
                for nn in NAME_NAMES:
                    if nn in children and children[nn].ndim == 1:
                        got = [_frame_of(_decode(x)) for x in children[nn][()]]
                        if all(g is not None for g in got):
                            frames, how = np.asarray(got, np.int64), f"from {nn}"
                            break
            if frames is None:
                frames = np.arange(1, len(feats) + 1, dtype=np.int64)
            if len(frames) != len(feats):
                raise AbawError(f"{path}: {name}: {len(frames)} frame numbers for {len(feats)} feature rows")
            out.append((name, frames, feats, how))
            continue
        # per-image layout: one 1-D dataset per frame
        per = [(n, _frame_of(n), d) for n, d in children.items() if d.ndim == 1 and d.dtype.kind == "f"]
        per = [(n, fr, d) for n, fr, d in per if fr is not None]
        if per:
            per.sort(key=lambda t: t[1])
            dims = {len(d) for _, _, d in per}
            if len(dims) != 1:
                raise AbawError(f"{path}: per-image features of {name!r} have different lengths {sorted(dims)[:4]}")
            feats = np.stack([d[()] for _, _, d in per])
            out.append((name, np.asarray([fr for _, fr, _ in per], np.int64), feats, "from image names"))
    return out


def import_hdf5(path: str | os.PathLike, store: str | os.PathLike | FeatureStore, key: str | None = None,
                dataset: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Bring features from an HDF5 file into a cache. Returns {videos, written, skipped, failed}."""
    import h5py

    from abaw.fingerprint import file_sha256, same_features

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AbawError(f"{path}: no such file")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, "a")
    report: dict[str, Any] = {"videos": 0, "written": 0, "skipped": 0, "failed": []}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise AbawError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if f.attrs.get("abaw_export") is not None:
            if key is not None or dataset is not None:
                raise AbawError(f"{path}: an abaw export keeps its own keys; --key/--dataset do not apply")
            for v, g in f.items():
                report["videos"] += 1
                try:
                    _import_ours(fs, v, g, overwrite, report)
                except AbawError as e:
                    report["failed"].append({"video": v, "error": str(e)})
            return report
        key = key or re.sub(r"[^A-Za-z0-9._-]+", "_", f"h5_{Path(path).stem}" + (f"_{dataset}" if dataset else ""))
        entries = _generic_entries(f, dataset, path)
        if not entries:
            raise AbawError(f"{path}: no per-video or per-image features recognised (see `abaw cache import --help`)")
        sha = file_sha256(path)
        for v, frames, feats, how in entries:
            report["videos"] += 1
            try:
                order = np.argsort(frames, kind="stable")
                frames, feats = frames[order], feats[order]
                if (np.diff(frames) == 0).any():
                    raise AbawError(f"{path}: video {v!r} lists a frame twice")
                if len(frames) and frames[0] < 1:
                    raise AbawError(f"{path}: video {v!r} has frame numbers below 1")
                fp = {"spec": f"hdf5:{os.path.abspath(path)}" + (f"#{dataset}" if dataset else ""), "key": key,
                      "dim": int(feats.shape[1]), "preprocess": None, "weights_sha256": sha,
                      "source": {"imported_from": os.path.abspath(path), "frames": how}}
                _write(fs, v, frames, np.full(len(frames), np.nan), np.ones(len(frames), bool),
                       {"source": {"import": os.path.abspath(path), "kind": "imported"}}, {}, {key: (feats, fp)},
                       overwrite, report, same_features)
            except AbawError as e:
                report["failed"].append({"video": v, "error": str(e)})
    return report


def _import_ours(fs: FeatureStore, v: str, g, overwrite: bool, report: dict[str, Any]) -> None:
    from abaw.fingerprint import same_features

    attrs = json.loads(g.attrs["attrs"])
    for k in ("n_frames", "n_faces"):
        attrs.pop(k, None)
    extra = {n: g[n][()] for n in OPTIONAL_ARRAYS + EXTRA if n in g}
    feats = {}
    if "feat" in g:
        for k, d in g["feat"].items():
            feats[k] = (d[()], json.loads(d.attrs["fingerprint"]))
    _write(fs, v, g["frame"][()], g["timestamp"][()], g["face"][()].astype(bool), attrs, extra, feats, overwrite,
           report, same_features)


def _write(fs: FeatureStore, v: str, frame, ts, face, attrs, extra, feats: dict[str, tuple[np.ndarray, dict]],
           overwrite: bool, report: dict[str, Any], same_features) -> None:
    frame = np.asarray(frame, np.int32)
    if fs.has_video(v):
        idx = fs.read_index(v)
        if not np.array_equal(idx.frame, frame):
            if not overwrite:
                raise AbawError(f"video {v!r}: the cache indexes other frames ({len(idx.frame)} vs {len(frame)}); "
                                "import into another cache or use --overwrite")
            fs.write_video(v, frame, ts, face, attrs, extra=extra, overwrite=True)
    else:
        fs.write_video(v, frame, ts, face, attrs, extra=extra)
    wrote = False
    for k, (arr, fp) in feats.items():
        if fs.has_features(v, k):
            if same_features(fs.fingerprint(v, k), fp):
                continue
            if not overwrite:
                raise AbawError(f"video {v!r}: features {k!r} already exist with another fingerprint "
                                "(use --overwrite)")
            fs.write_features(v, k, arr, fp, overwrite=True)
        else:
            fs.write_features(v, k, arr, fp)
        wrote = True
    report["written" if wrote else "skipped"] += 1


__all__ = ["export_hdf5", "import_hdf5"]
