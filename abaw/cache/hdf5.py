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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from abaw.cache.store import INDEX_ARRAYS, OPTIONAL_ARRAYS, FeatureStore, check_name
from abaw.data.labels import MAX_FRAME
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


MAX_READ_BYTES = 8 << 30  # one video's dataset larger than this is refused (declared sizes can be absurd)


def _link_problem(parent, name: str) -> str | None:
    """Why the member `name` of `parent` is refused (external links, external or virtual
    storage: reading them would open other files), else None."""
    import h5py

    link = parent.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"{name!r} is an HDF5 external link (to {link.filename}); refused"
    obj = parent.get(name)
    if isinstance(obj, h5py.Dataset):
        if obj.external:
            return f"{name!r} stores its data in external files; refused"
        if obj.is_virtual:
            return f"{name!r} is a virtual dataset (maps other files); refused"
    return None


def _members(group, what: str) -> dict[str, Any]:
    """The members of `group`, refusing external links/storage anywhere below it."""
    import h5py

    out = {}
    for name in group:
        why = _link_problem(group, name)
        if why is not None:
            raise AbawError(f"{what}: {why}")
        out[name] = group[name]
        if isinstance(out[name], h5py.Group):
            _members(out[name], f"{what}/{name}")
    return out


def _read(d, what: str) -> np.ndarray:
    """Read a whole dataset, refusing absurd declared sizes before allocating them."""
    n = int(np.prod(d.shape, dtype=np.float64) * d.dtype.itemsize) if d.shape else d.dtype.itemsize
    if n > MAX_READ_BYTES:
        raise AbawError(f"{what}: dataset declares shape {tuple(d.shape)} ({n / 2**30:.0f} GiB), more than "
                        f"{MAX_READ_BYTES >> 30} GiB for one video; refused")
    try:
        return d[()]
    except MemoryError:
        raise AbawError(f"{what}: dataset of shape {tuple(d.shape)} does not fit in memory") from None
    except (OSError, ValueError, TypeError) as e:
        raise AbawError(f"{what}: unreadable dataset ({e})") from None


def _frames(frames: np.ndarray, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype.kind not in "iu":
        raise AbawError(f"{what}: frame numbers are not integers ({frames.dtype})")
    if len(frames) and (frames.min() < 1 or frames.max() > MAX_FRAME):
        raise AbawError(f"{what}: frame numbers must lie in 1..{MAX_FRAME} (found {frames.min()}..{frames.max()})")
    return frames.astype(np.int64)


def _generic_entries(f, dataset: str | None, path: str):
    """(video, read) for each member that looks like a video; `read()` returns (frames,
    features, how frames were found) or raises AbawError for that video alone."""
    import h5py

    for name in f:
        why = _link_problem(f, name)
        if why is not None:
            yield name, (lambda why=why: (_ for _ in ()).throw(AbawError(f"{path}: {why}")))
            continue
        obj = f[name]
        if isinstance(obj, h5py.Dataset):
            if dataset is None and obj.ndim == 2:
                def read(obj=obj, name=name):
                    feats = _read(obj, f"{path}: {name}")
                    return np.arange(1, len(feats) + 1, dtype=np.int64), feats, "assumed 1..N"
                yield name, read
            continue
        if isinstance(obj, h5py.Group):
            yield name, (lambda obj=obj, name=name: _group_entry(obj, name, dataset, path))


def _group_entry(obj, name: str, dataset: str | None, path: str):
    import h5py

    what = f"{path}: {name}"
    children = {k: v for k, v in _members(obj, what).items() if isinstance(v, h5py.Dataset)}
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
        feats = _read(children[feat_name], f"{what}/{feat_name}")
        if feats.ndim != 2:
            raise AbawError(f"{path}: {name}/{feat_name} is not a 2-D [frames, dim] dataset")
        frames, how = None, "assumed 1..N"
        for fn in FRAME_NAMES:
            if fn in children and children[fn].ndim == 1 and children[fn].dtype.kind in "iu":
                frames, how = _frames(_read(children[fn], f"{what}/{fn}"), f"{what}/{fn}"), f"from {fn}"
                break
        if frames is None:
            for nn in NAME_NAMES:
                if nn in children and children[nn].ndim == 1:
                    got = [_frame_of(_decode(x)) for x in _read(children[nn], f"{what}/{nn}")]
                    if all(g is not None for g in got):
                        frames, how = _frames(np.asarray(got, np.int64), f"{what}/{nn}"), f"from {nn}"
                        break
        if frames is None:
            frames = np.arange(1, len(feats) + 1, dtype=np.int64)
        if len(frames) != len(feats):
            raise AbawError(f"{path}: {name}: {len(frames)} frame numbers for {len(feats)} feature rows")
        return frames, feats, how
    # per-image layout: one 1-D dataset per frame
    per = [(n, _frame_of(n), d) for n, d in children.items() if d.ndim == 1 and d.dtype.kind == "f"]
    per = [(n, fr, d) for n, fr, d in per if fr is not None]
    if not per:
        raise AbawError(f"{path}: group {name!r} holds no recognised features")
    per.sort(key=lambda t: t[1])
    dims = {len(d) for _, _, d in per}
    if len(dims) != 1:
        raise AbawError(f"{path}: per-image features of {name!r} have different lengths {sorted(dims)[:4]}")
    feats = np.stack([_read(d, f"{what}/{n}") for n, _, d in per])
    return _frames(np.asarray([fr for _, fr, _ in per], np.int64), what), feats, "from image names"


def import_hdf5(path: str | os.PathLike, store: str | os.PathLike | FeatureStore, key: str | None = None,
                dataset: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Bring features from an HDF5 file into a cache. Returns {videos, written, skipped, failed}."""
    import h5py

    from abaw.fingerprint import file_sha256, same_features

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AbawError(f"{path}: no such file")
    if key is not None:
        check_name(key, "backbone key")
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
            for v in f:
                report["videos"] += 1
                try:
                    why = _link_problem(f, v)
                    if why is not None:
                        raise AbawError(f"{path}: {why}")
                    _import_ours(fs, v, f[v], overwrite, report, path)
                except AbawError as e:
                    report["failed"].append({"video": v, "error": str(e)})
            return report
        key = key or re.sub(r"[^A-Za-z0-9._-]+", "_", f"h5_{Path(path).stem}" + (f"_{dataset}" if dataset else ""))
        entries = list(_generic_entries(f, dataset, path))
        if not entries:
            raise AbawError(f"{path}: no per-video or per-image features recognised (see `abaw cache import --help`)")
        sha = file_sha256(path)
        for v, read in entries:
            report["videos"] += 1
            try:
                frames, feats, how = read()
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


def _json_attr(obj, name: str, what: str) -> Any:
    if name not in obj.attrs:
        raise AbawError(f"{what}: attribute {name!r} is missing")
    try:
        return json.loads(_decode(obj.attrs[name]))
    except (ValueError, TypeError) as e:
        raise AbawError(f"{what}: attribute {name!r} is not valid JSON ({e})") from None


def _import_ours(fs: FeatureStore, v: str, g, overwrite: bool, report: dict[str, Any], path: str = "") -> None:
    import h5py

    from abaw.fingerprint import same_features

    what = f"{path}: video {v!r}"
    check_name(v, "video id")
    if not isinstance(g, h5py.Group):
        raise AbawError(f"{what}: not a group")
    members = _members(g, what)
    attrs = _json_attr(g, "attrs", what)
    if not isinstance(attrs, dict):
        raise AbawError(f"{what}: attribute 'attrs' is not a JSON object")
    for k in ("n_frames", "n_faces"):
        attrs.pop(k, None)
    for n in INDEX_ARRAYS:
        if n not in members:
            raise AbawError(f"{what}: dataset {n!r} is missing")
    frame = _frames(_read(g["frame"], f"{what}/frame"), f"{what}/frame")
    if len(frame) > 1 and (np.diff(frame) <= 0).any():
        raise AbawError(f"{what}: frame numbers are not strictly increasing (reversed or repeated frames)")
    rows = {n: _read(g[n], f"{what}/{n}") for n in ("timestamp", "face") + tuple(x for x in OPTIONAL_ARRAYS + EXTRA
                                                                                if x in members)}
    short = [n for n, a in rows.items() if a.ndim < 1 or len(a) != len(frame)]
    feats = {}
    if "feat" in members:
        for k, d in g["feat"].items():
            check_name(k, "backbone key")
            feats[k] = (_read(d, f"{what}/feat/{k}"), _json_attr(d, "fingerprint", f"{what}/feat/{k}"))
            if feats[k][0].ndim != 2 or len(feats[k][0]) != len(frame):
                short.append(f"feat/{k}")
    if short:
        raise AbawError(f"{what}: {short} do not have one row per frame ({len(frame)} frames)")
    extra = {n: a for n, a in rows.items() if n not in ("timestamp", "face")}
    _write(fs, v, frame, rows["timestamp"], rows["face"].astype(bool), attrs, extra, feats, overwrite,
           report, same_features)


def _write(fs: FeatureStore, v: str, frame, ts, face, attrs, extra, feats: dict[str, tuple[np.ndarray, dict]],
           overwrite: bool, report: dict[str, Any], same_features) -> None:
    try:
        _write_unchecked(fs, v, frame, ts, face, attrs, extra, feats, overwrite, report, same_features)
    except ValueError as e:  # shapes the store refuses
        raise AbawError(f"video {v!r}: {e}") from None


def _write_unchecked(fs: FeatureStore, v: str, frame, ts, face, attrs, extra, feats, overwrite: bool,
                     report: dict[str, Any], same_features) -> None:
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
