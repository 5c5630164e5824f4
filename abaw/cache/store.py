"""The Zarr v3 feature cache.

Layout (a local directory store):

    STORE/zarr.json                    root group; attrs {"abaw_cache": 1, ...}
    STORE/videos/<video>/              one group per video (or frame folder)
        zarr.json                      attrs: source {path,size,mtime}, settings, counts
        frame      int32   [N]         1-based frame numbers (gaps allowed for frame folders)
        timestamp  float64 [N]         seconds (NaN when unknown, e.g. frame folders)
        face       bool    [N]         a face was found (features of other rows are zero)
        box        float32 [N, 4]      optional: detector box x0,y0,x1,y1 (NaN if none)
        landmarks  float32 [N, 5, 2]   optional: 5 facial points (NaN if none)
        score      float32 [N]         optional: detector score of the chosen face (NaN if none)
        feat/<key> float16 [N, D]      one array per backbone; attrs {"fingerprint": {...}}
    STORE/.staging/                    units being written (ignored; cleared on open)

Every unit (a video's index group, one backbone's feature array) is written completely
under `.staging/` and then moved into place with one atomic directory rename: a unit
either exists whole or not at all, so a run killed at any moment (kill -9) and rerun
gives the same cache. No shared metadata is mutated after creation, so several
processes (torchrun ranks) can write different videos into one store concurrently.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from abaw.errors import AbawError

CACHE_VERSION = 1
INDEX_ARRAYS = ("frame", "timestamp", "face")
OPTIONAL_ARRAYS = ("box", "landmarks")


def _zarr():
    import zarr

    return zarr


def _compressors():
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=1),)


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("__") \
            or name.startswith(".") or "\x00" in name:
        raise AbawError(f"{what} {name!r} cannot be stored in the cache")


@dataclass(frozen=True)
class VideoIndex:
    """The per-frame index of one cached video."""

    video: str
    frame: np.ndarray  # int32 [N]
    timestamp: np.ndarray  # float64 [N]
    face: np.ndarray  # bool [N]
    attrs: dict[str, Any]


class FeatureStore:
    """A Zarr feature cache on local disk. `mode='r'` to read, `'a'` to read and write."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        zarr = _zarr()
        root_meta = self.path / "zarr.json"
        if mode == "r":
            if not root_meta.exists():
                raise AbawError(f"{self.path}: not an abaw feature cache (no zarr.json)")
        elif mode == "a":
            # (another process creating the cache right now leaves only a `.staging-root-*` entry)
            if self.path.exists() and not root_meta.exists() and any(
                    not p.name.startswith(".staging") for p in self.path.iterdir()):
                raise AbawError(f"{self.path}: exists and is not a feature cache; choose another path")
            self.path.mkdir(parents=True, exist_ok=True)
            if not root_meta.exists():
                self._create_root()
            (self.path / "videos").mkdir(exist_ok=True)
            if not (self.path / "videos" / "zarr.json").exists():
                zarr.open_group(str(self.path / "videos"), mode="a")
        else:
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        if attrs.get("abaw_cache") != CACHE_VERSION:
            raise AbawError(f"{self.path}: not an abaw feature cache (version {attrs.get('abaw_cache')!r})")

    def _create_root(self) -> None:
        from abaw import __version__

        zarr = _zarr()
        tmp = self.path / f".staging-root-{uuid.uuid4().hex}"
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update({"abaw_cache": CACHE_VERSION, "created_by": f"abaw {__version__}", "layout": "videos/<video>"})
        try:
            os.link(tmp / "zarr.json", self.path / "zarr.json")  # fails if another process won
        except FileExistsError:
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ listing

    def _vdir(self, video: str) -> Path:
        _check_name(video, "video id")
        return self.path / "videos" / video

    def videos(self) -> list[str]:
        """Ids of videos whose index is complete, sorted."""
        vdir = self.path / "videos"
        if not vdir.exists():
            return []
        return sorted(p.name for p in vdir.iterdir() if (p / "zarr.json").exists() and not p.name.startswith("."))

    def has_video(self, video: str) -> bool:
        return (self._vdir(video) / "zarr.json").exists()

    def feature_keys(self, video: str) -> list[str]:
        """Backbone keys whose features are complete for `video`."""
        fdir = self._vdir(video) / "feat"
        if not fdir.exists():
            return []
        return sorted(p.name for p in fdir.iterdir() if (p / "zarr.json").exists())

    def has_features(self, video: str, key: str) -> bool:
        return (self._vdir(video) / "feat" / key / "zarr.json").exists()

    # ------------------------------------------------------------------ reading

    def video_attrs(self, video: str) -> dict[str, Any]:
        if not self.has_video(video):
            raise AbawError(f"{self.path}: video {video!r} is not in the cache")
        return dict(_zarr().open_group(str(self._vdir(video)), mode="r").attrs)

    def read_index(self, video: str) -> VideoIndex:
        zarr = _zarr()
        if not self.has_video(video):
            raise AbawError(f"{self.path}: video {video!r} is not in the cache")
        g = zarr.open_group(str(self._vdir(video)), mode="r")
        return VideoIndex(video=video, frame=np.asarray(g["frame"][:]), timestamp=np.asarray(g["timestamp"][:]),
                          face=np.asarray(g["face"][:]), attrs=dict(g.attrs))

    def read_array(self, video: str, name: str) -> np.ndarray | None:
        """An optional per-frame array of the video index (`box`, `landmarks`), or None."""
        p = self._vdir(video) / name
        if not (p / "zarr.json").exists():
            return None
        return np.asarray(_zarr().open_array(str(p), mode="r")[:])

    def read_features(self, video: str, key: str) -> np.ndarray:
        """The whole float16 [N, D] feature array of one backbone for one video."""
        p = self._vdir(video) / "feat" / key
        if not (p / "zarr.json").exists():
            raise AbawError(f"{self.path}: no {key!r} features for video {video!r}")
        return np.asarray(_zarr().open_array(str(p), mode="r")[:])

    def fingerprint(self, video: str, key: str) -> dict[str, Any]:
        p = self._vdir(video) / "feat" / key
        if not (p / "zarr.json").exists():
            raise AbawError(f"{self.path}: no {key!r} features for video {video!r}")
        return dict(_zarr().open_array(str(p), mode="r").attrs).get("fingerprint", {})

    # ------------------------------------------------------------------ writing

    def _staging(self) -> Path:
        d = self.path / ".staging" / f"{os.getpid()}-{uuid.uuid4().hex}"
        d.mkdir(parents=True)
        return d

    def clear_staging(self) -> int:
        """Remove leftovers of interrupted writes (call once before a run; not while other
        processes write). Returns how many were removed."""
        s = self.path / ".staging"
        if not s.exists():
            return 0
        n = 0
        for p in s.iterdir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    def _install(self, tmp: Path, final: Path, overwrite: bool) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise AbawError(f"{final.relative_to(self.path)} already exists in {self.path} (use overwrite)")
            trash = self.path / ".staging" / f"old-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)

    def write_video(self, video: str, frame: np.ndarray, timestamp: np.ndarray, face: np.ndarray,
                    attrs: dict[str, Any], extra: dict[str, np.ndarray] | None = None,
                    overwrite: bool = False) -> None:
        """Write one video's index atomically (replacing it drops its features)."""
        zarr = _zarr()
        frame = np.asarray(frame, dtype=np.int32)
        n = len(frame)
        timestamp = np.asarray(timestamp, dtype=np.float64)
        face = np.asarray(face, dtype=bool)
        if timestamp.shape != (n,) or face.shape != (n,):
            raise ValueError("frame, timestamp and face must have the same length")
        if n and (np.diff(frame) <= 0).any():
            raise ValueError(f"{video}: frame numbers must be strictly increasing")
        stage = self._staging()
        tmp = stage / "unit"
        g = zarr.open_group(str(tmp), mode="w")
        arrays = {"frame": frame, "timestamp": timestamp, "face": face, **(extra or {})}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if len(arr) != n:
                raise ValueError(f"{video}: array {name} has {len(arr)} rows, expected {n}")
            chunks = arr.shape if n else tuple(max(1, d) for d in arr.shape)  # zarr needs chunks >= 1
            a = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, compressors=_compressors())
            if n:
                a[...] = arr
        zarr.open_group(str(tmp / "feat"), mode="w")
        g.attrs.update({**attrs, "n_frames": int(n), "n_faces": int(face.sum())})
        self._install(tmp, self._vdir(video), overwrite)
        shutil.rmtree(stage, ignore_errors=True)

    def write_features(self, video: str, key: str, feats: np.ndarray, fingerprint: dict[str, Any],
                       overwrite: bool = False) -> None:
        """Write one backbone's [N, D] features for a video atomically (stored as float16)."""
        zarr = _zarr()
        _check_name(key, "backbone key")
        if not self.has_video(video):
            raise AbawError(f"{self.path}: write the index of {video!r} before its features")
        n = int(self.video_attrs(video)["n_frames"])
        feats = np.ascontiguousarray(feats, dtype=np.float16)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"{video}/{key}: features {feats.shape} do not match {n} frames")
        stage = self._staging()
        tmp = stage / "unit"
        chunks = (max(1, min(n, 16384)), max(1, feats.shape[1]))
        a = zarr.create_array(str(tmp), shape=feats.shape, dtype="float16", chunks=chunks,
                              compressors=_compressors())
        if n:
            a[...] = feats
        a.attrs["fingerprint"] = fingerprint
        self._install(tmp, self._vdir(video) / "feat" / key, overwrite)
        shutil.rmtree(stage, ignore_errors=True)

    def delete_video(self, video: str) -> None:
        d = self._vdir(video)
        if d.exists():
            trash = self.path / ".staging" / f"del-{uuid.uuid4().hex}"
            trash.parent.mkdir(exist_ok=True)
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """Features of several backbones for many videos, contiguous in RAM.

    Row i is frame `frame[i]` of video `videos[video_idx[i]]`; rows are grouped by video
    (in `videos` order) and sorted by frame inside each video.
    """

    keys: tuple[str, ...]
    videos: tuple[str, ...]
    video_idx: np.ndarray  # int32 [N]
    frame: np.ndarray  # int32 [N]
    face: np.ndarray  # bool [N]
    timestamp: np.ndarray  # float64 [N]
    feats: dict[str, np.ndarray]  # key -> float16 [N, D_key]
    fingerprints: dict[str, dict[str, Any]]
    store: str = ""  # path of the cache the features were loaded from

    def __len__(self) -> int:
        return len(self.frame)

    def video_slice(self, video: str) -> slice:
        i = self.videos.index(video)
        lo, hi = np.searchsorted(self.video_idx, [i, i + 1])
        return slice(int(lo), int(hi))

    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.feats.items()}


def load_features(store: str | os.PathLike | FeatureStore, keys: Iterable[str],
                  videos: Iterable[str] | None = None, faces_only: bool = False,
                  missing: str = "error", frames: dict[str, Iterable[int]] | None = None) -> FeatureTable:
    """Load chosen backbones' features for chosen videos into contiguous RAM arrays.

    `missing='error'` raises if a requested video or backbone is absent from the cache;
    `'skip'` leaves such videos out. `faces_only` drops frames without a face. `frames`
    ({video: frame numbers}) keeps only those frames (the ones the cache has); videos not
    in it are loaded whole, unless `videos` is None, in which case only its videos load.
    Each video's arrays are read whole (small Zarr reads are slow); the indexes are read
    first and the features copied into preallocated arrays, so the peak memory is the
    table plus one video.
    """
    chosen = frames
    if chosen is not None and videos is None:
        videos = list(chosen)
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, "r")
    keys = tuple(keys)
    if not keys:
        raise AbawError("load_features: no backbone keys given")
    wanted = fs.videos() if videos is None else list(dict.fromkeys(videos))
    have = set(fs.videos())
    use: list[str] = []
    absent: list[str] = []
    for v in wanted:
        if v in have and all(fs.has_features(v, k) for k in keys):
            use.append(v)
        else:
            absent.append(v)
    if absent and missing == "error":
        raise AbawError(f"{fs.path}: {len(absent)} videos lack features for {list(keys)}, e.g. {absent[:5]}")
    indexes = [fs.read_index(v) for v in use]
    sel: list[Any] = []
    for v, idx in zip(use, indexes):
        rows: Any = idx.face if faces_only else slice(None)  # a slice keeps reads copy-free
        if chosen is not None and v in chosen:
            pick = np.isin(idx.frame, np.fromiter(chosen[v], dtype=np.int64))
            rows = pick & idx.face if faces_only else pick
        sel.append(rows)
    counts = [len(idx.frame) if isinstance(s, slice) else int(np.count_nonzero(s)) for idx, s in zip(indexes, sel)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])
    feats: dict[str, np.ndarray] = {}
    fps: dict[str, dict[str, Any]] = {}
    for k in keys:
        out = None
        for i, v in enumerate(use):
            f = fs.read_features(v, k)
            fp = fs.fingerprint(v, k)
            if k in fps:
                from abaw.fingerprint import same_features

                if not same_features(fps[k], fp):
                    raise AbawError(f"{fs.path}: backbone {k!r} has different fingerprints across videos "
                                    f"(e.g. {use[0]!r} vs {v!r}); re-extract with --overwrite")
            else:
                fps[k] = fp
            if out is None:
                out = np.empty((n, f.shape[1]), dtype=np.float16)
            elif f.shape[1] != out.shape[1]:
                raise AbawError(f"{fs.path}: backbone {k!r} has {f.shape[1]}-d features in {v!r}, "
                                f"{out.shape[1]}-d elsewhere")
            out[offsets[i]:offsets[i + 1]] = f[sel[i]]
        feats[k] = out if out is not None else np.zeros((0, 0), np.float16)

    def cat(xs: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(0, dtype)

    return FeatureTable(
        keys=keys,
        videos=tuple(use),
        video_idx=np.repeat(np.arange(len(use), dtype=np.int32), counts),
        frame=cat([idx.frame[s] for idx, s in zip(indexes, sel)], np.int32),
        face=cat([idx.face[s] for idx, s in zip(indexes, sel)], bool),
        timestamp=cat([idx.timestamp[s] for idx, s in zip(indexes, sel)], np.float64),
        feats=feats,
        fingerprints=fps,
        store=str(fs.path),
    )
