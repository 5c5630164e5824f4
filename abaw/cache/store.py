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
    STORE/.staging/                    units being written (ignored; stale ones cleared on open)
    STORE/.lock                        the writers' lock (see cache/lock.py)
    <unit>/.abaw_done.json             done-marker: shapes, content hashes, file sizes

Every unit (a video's index group, one backbone's feature array) is written completely
under `.staging/` and then moved into place with one atomic directory rename: a unit
either exists whole or not at all, so a run killed at any moment (kill -9) and rerun
gives the same cache. No shared metadata is mutated after creation, so the ranks of one
torchrun job can write different videos into one store concurrently; other processes
are kept out by the store's lock. Each unit carries a done-marker and checksummed
chunks (cache/integrity.py): damage is reported on load as a one-line AbawError naming
the store, video and array, and `has_video`/`has_features` count damaged units as
absent (so `extract` redoes them); `abaw cache verify` lists and repairs them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abaw.cache import integrity, lock
from abaw.cache.integrity import Damage, UnitState, unit_state
from abaw.cache.write import StoreWriter
from abaw.errors import AbawError

CACHE_VERSION = 1
INDEX_ARRAYS = ("frame", "timestamp", "face")
OPTIONAL_ARRAYS = ("box", "landmarks")


def _zarr():
    import zarr

    return zarr


_ZARR_ERRORS = (ValueError, KeyError, OSError, RuntimeError, TypeError, json.JSONDecodeError)


def check_name(name: str, what: str) -> None:
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


class FeatureStore(StoreWriter):
    """A Zarr feature cache on local disk. `mode='r'` to read, `'a'` to read and write
    (takes the store's write lock until `close()`, see cache/lock.py)."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        self._lock: str | None = None
        self._dirs: dict[tuple[str, str | None], str] = {}  # see _unit
        root_meta = self.path / "zarr.json"
        if mode == "r":
            if not root_meta.exists():
                raise AbawError(f"{self.path}: not an abaw feature cache (no zarr.json)")
        elif mode == "a":
            if self.path.exists() and not root_meta.exists() and any(
                    not p.name.startswith(".") for p in self.path.iterdir()):
                raise AbawError(f"{self.path}: exists and is not a feature cache; choose another path")
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = lock.acquire(self.path)
            try:
                if lock.owns(self.path):
                    self.clear_staging()  # only dead writers' entries: we hold the lock
                if not root_meta.exists():
                    self._create_root()
                (self.path / "videos").mkdir(exist_ok=True)
                if not (self.path / "videos" / "zarr.json").exists():
                    _zarr().open_group(str(self.path / "videos"), mode="a")
            except BaseException:
                self.close()
                raise
        else:
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        try:
            attrs = json.loads(root_meta.read_bytes()).get("attributes", {})
        except (ValueError, AttributeError, OSError):
            self.close()
            raise AbawError(f"{self.path}: the root zarr.json is damaged (not valid JSON)") from None
        if attrs.get("abaw_cache") != CACHE_VERSION:
            self.close()
            raise AbawError(f"{self.path}: not an abaw feature cache (version {attrs.get('abaw_cache')!r})")

    def close(self) -> None:
        """Drop this handle's share of the write lock (also done when it is garbage collected)."""
        if self._lock is not None:
            lock.release(self._lock)
            self._lock = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create_root(self) -> None:
        from abaw import __version__

        zarr = _zarr()
        tmp = self.path / f".staging-root-{uuid.uuid4().hex}"
        g = zarr.open_group(str(tmp), mode="w")
        g.attrs.update({"abaw_cache": CACHE_VERSION, "created_by": f"abaw {__version__}", "layout": "videos/<video>",
                        "integrity": integrity.MARKER_VERSION})
        try:
            os.link(tmp / "zarr.json", self.path / "zarr.json")  # fails if another process won
        except FileExistsError:
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ listing

    def _unit(self, video: str, key: str | None = None) -> str:
        """The folder of a video's index unit, or of its `key` features (a str: loading
        asks thousands of times, and pathlib is slow to build paths)."""
        d = self._dirs.get((video, key))
        if d is None:
            if key is None:
                check_name(video, "video id")
                d = os.path.join(os.fspath(self.path), "videos", video)
            else:
                check_name(key, "backbone key")
                d = os.path.join(self._unit(video), "feat", key)
            self._dirs[video, key] = d
        return d

    def _vdir(self, video: str) -> Path:
        return Path(self._unit(video))

    def _fdir(self, video: str, key: str) -> Path:
        return Path(self._unit(video, key))

    def videos(self) -> list[str]:
        """Ids of videos present in the cache, sorted (a damaged index counts as present:
        reading it raises the damage; `has_video` says whether it is usable)."""
        vdir = self.path / "videos"
        if not vdir.exists():
            return []
        return sorted(p.name for p in vdir.iterdir() if not p.name.startswith(".")
                      and ((p / "zarr.json").exists() or (p / integrity.MARKER).exists()))

    def video_state(self, video: str, light: bool = False) -> UnitState:
        return unit_state(self._unit(video), light)

    def feature_state(self, video: str, key: str, light: bool = False) -> UnitState:
        return unit_state(self._unit(video, key), light)

    def _usable(self, unit: Path, st: UnitState, deep: bool) -> bool:
        if st.state == "ok" and deep:
            try:  # every chunk's crc32c (reads the unit at GB/s; no content hash)
                for rel, info in st.marker["arrays"].items():
                    integrity.read_array(unit, rel, info)
            except Damage:
                return False
        return st.state in ("ok", "legacy")

    def has_video(self, video: str, deep: bool = True) -> bool:
        """The video's index is complete and undamaged (or a legacy unit). `deep` also
        checks every chunk's checksum (cheap: the index is small)."""
        return self._usable(self._vdir(video), self.video_state(video), deep)

    def feature_keys(self, video: str) -> list[str]:
        """Backbone keys whose features are complete (undamaged) for `video`."""
        fdir = self._vdir(video) / "feat"
        if not fdir.exists():
            return []
        return sorted(p.name for p in fdir.iterdir() if not p.name.startswith(".")
                      and unit_state(p).state in ("ok", "legacy"))

    def has_features(self, video: str, key: str, deep: bool = True) -> bool:
        """The features are complete and undamaged, so `extract` calls them done (and
        redoes a damaged unit). `deep` also checks every chunk's checksum, i.e. reads the
        array (about a second per GiB); `deep=False` checks only files and sizes."""
        return self._usable(self._fdir(video, key), self.feature_state(video, key), deep)

    # ------------------------------------------------------------------ reading

    def damaged(self, video: str, array: str, reason: str) -> AbawError:
        """The one-line error for a damaged unit."""
        return AbawError(f"{self.path}: video {video!r}, array {array!r} is damaged ({reason}); run "
                         f"`abaw cache verify {self.path} --repair` and rerun `abaw extract` to redo it")

    def _checked(self, video: str, key: str | None = None, light: bool = False) -> UnitState:
        st = self.video_state(video, light) if key is None else self.feature_state(video, key, light)
        arr = (lambda a: a) if key is None else (lambda a: f"feat/{key}" if a == "." else f"feat/{key}/{a}")
        if st.state == "absent":
            if key is None:
                raise AbawError(f"{self.path}: video {video!r} is not in the cache")
            raise AbawError(f"{self.path}: no {key!r} features for video {video!r}")
        if st.state == "damaged":
            raise self.damaged(video, arr(st.array), st.reason)
        return st

    def _legacy(self, video: str, array: str, read):
        try:
            return read()
        except _ZARR_ERRORS as e:
            msg = str(e).splitlines()[0][:160] if str(e) else ""
            raise self.damaged(video, array, f"unreadable: {type(e).__name__} {msg}".strip()) from None

    def _attrs(self, unit: str, video: str, array: str, st: UnitState | None = None) -> dict[str, Any]:
        try:
            raw = st.meta["zarr.json"] if st is not None and st.meta else Path(unit, "zarr.json").read_bytes()
            return dict(json.loads(raw).get("attributes") or {})
        except (ValueError, AttributeError, OSError):
            raise self.damaged(video, array, "zarr.json is not valid JSON") from None

    def _read(self, video: str, st: UnitState, unit: str, rel: str, label: str,
              out: np.ndarray | None = None) -> np.ndarray:
        """One array of a checked unit, into `out` when given (marked units only)."""
        if st.state == "ok":
            try:
                return integrity.read_array(unit, rel, st.marker["arrays"][rel], out)
            except Damage as d:
                raise self.damaged(video, label, d.reason) from None
        path = unit if rel == "." else os.path.join(unit, rel)
        a = self._legacy(video, label, lambda: np.asarray(_zarr().open_array(path, mode="r")[:]))
        if out is not None:
            out[...] = a
            return out
        return a

    def video_attrs(self, video: str) -> dict[str, Any]:
        self._checked(video)
        return self._attrs(self._unit(video), video, "zarr.json")

    def read_index(self, video: str, light: bool = False, attrs: bool = True,
                   state: UnitState | None = None) -> VideoIndex:
        """The video's index; `light` checks only what it reads (the three arrays' chunks
        and the group's zarr.json), as loading does; `attrs=False` leaves `attrs` empty
        (loading needs only the arrays; the zarr.json is still checked). `state`: the
        index unit's state when the caller has checked it already."""
        st = state or self._checked(video, light=light)
        vdir = self._unit(video)
        a = {n: self._read(video, st, vdir, n, n) for n in INDEX_ARRAYS}
        return VideoIndex(video=video, frame=a["frame"], timestamp=a["timestamp"], face=a["face"],
                          attrs=self._attrs(vdir, video, "zarr.json", st) if attrs else {})

    def read_array(self, video: str, name: str) -> np.ndarray | None:
        """An optional per-frame array of the video index (`box`, `landmarks`), or None."""
        st = self._checked(video)
        vdir = self._unit(video)
        if st.state == "ok" and name not in st.marker["arrays"] or not os.path.exists(os.path.join(vdir, name, "zarr.json")):
            return None
        return self._read(video, st, vdir, name, name)

    def read_features(self, video: str, key: str, out: np.ndarray | None = None,
                      state: UnitState | None = None) -> np.ndarray:
        """The whole float16 [N, D] feature array of one backbone for one video (checked:
        damaged or non-finite features raise a one-line AbawError naming the video)."""
        st = state or self._checked(video, key)
        f = self._read(video, st, self._unit(video, key), ".", f"feat/{key}", out)
        if st.state == "legacy" and not integrity.all_finite(f):  # marked units were checked when written
            raise AbawError(f"{self.path}: video {video!r}, array 'feat/{key}' holds non-finite features (NaN/inf); "
                            f"re-extract it (`abaw extract ... --overwrite`)")
        return f

    def feature_shape(self, video: str, key: str, state: UnitState | None = None) -> tuple[int, ...]:
        st = state or self._checked(video, key)
        if st.state == "ok":
            return tuple(st.marker["arrays"]["."]["shape"])
        meta = self._legacy(video, f"feat/{key}", lambda: json.loads((self._fdir(video, key) / "zarr.json").read_bytes()))
        return tuple(meta["shape"])

    def fingerprint(self, video: str, key: str, state: UnitState | None = None) -> dict[str, Any]:
        st = state or self._checked(video, key)
        return self._attrs(self._unit(video, key), video, f"feat/{key}", st).get("fingerprint", {})


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


@dataclass
class _Probe:
    """One video in `load_features` after its first pass."""

    video: str
    vst: UnitState  # its index unit
    sts: tuple[UnitState, ...]  # its feature units, one per key
    n: int  # rows of its index
    index: VideoIndex | None = None  # read in the first pass when rows are selected, else by the pool
    rows: Any = field(default_factory=lambda: slice(None))  # a slice reads straight into the table


def _threads(n_tasks: int) -> int:
    return max(1, min(LOAD_THREADS or (os.cpu_count() or 1), n_tasks))


LOAD_THREADS = 0  # threads reading a cache into RAM (0: one per CPU); reads release the GIL


def load_features(store: str | os.PathLike | FeatureStore, keys: Iterable[str],
                  videos: Iterable[str] | None = None, faces_only: bool = False,
                  missing: str = "error", frames: dict[str, Iterable[int]] | None = None) -> FeatureTable:
    """Load chosen backbones' features for chosen videos into contiguous RAM arrays.

    `missing='error'` raises if a requested video or backbone is absent from the cache;
    `'skip'` leaves such videos out. A damaged unit always raises (naming video and
    array). `faces_only` drops frames without a face. `frames` ({video: frame numbers})
    keeps only those frames (the ones the cache has); videos not in it are loaded whole,
    unless `videos` is None, in which case only its videos load.

    Two passes. First, in this thread, every unit's done-marker and zarr.json (light
    check), the fingerprints and shapes: every error is raised before a feature is read,
    and the row counts come from the markers, so the table is allocated. Then a pool of
    threads reads, one task per video, its index arrays and every backbone's array
    straight into the table (one `readv` per chunk, its crc32c checked), so the small
    reads of one video overlap the large reads of another. A video whose rows are
    selected (`faces_only`, `frames`) or a legacy unit has its index read in the first
    pass. Peak memory: the table plus one video per thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    from abaw.fingerprint import same_features

    chosen = frames
    if chosen is not None and videos is None:
        videos = list(chosen)
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, "r")
    keys = tuple(keys)
    if not keys:
        raise AbawError("load_features: no backbone keys given")
    for k in keys:
        check_name(k, "backbone key")
    listed = fs.videos()
    wanted = listed if videos is None else list(dict.fromkeys(videos))
    have = set(listed)

    def probe(v: str) -> _Probe | None:
        """The states of one video's units (None when it lacks some); raises on damage."""
        if v not in have:
            return None
        sts = tuple(unit_state(fs._unit(v, k), light=True) for k in keys)
        if any(st.state == "absent" for st in sts):
            return None
        for k, st in zip(keys, sts):
            if st.state == "damaged":
                fs._checked(v, k, light=True)  # raises the one-line damage error
        vst = unit_state(fs._unit(v), light=True)
        if vst.state not in ("ok", "legacy"):
            vst = fs._checked(v, light=True)  # raises the one-line error (damaged, or removed meanwhile)
        p = _Probe(v, vst, sts, 0)
        if vst.state != "ok" or faces_only or (chosen is not None and v in chosen):
            p.index = fs.read_index(v, light=True, attrs=False, state=vst)
            p.n = len(p.index.frame)
            if faces_only:
                p.rows = p.index.face
            if chosen is not None and v in chosen:
                pick = np.isin(p.index.frame, np.fromiter(chosen[v], dtype=np.int64))
                p.rows = pick & p.index.face if faces_only else pick
        else:
            p.n = int(vst.marker["arrays"]["frame"]["shape"][0])
        return p

    probed = [probe(v) for v in wanted]  # small files and JSON: bound by the GIL, a pool only waits
    absent = [v for v, p in zip(wanted, probed) if p is None]
    if absent and missing == "error":
        raise AbawError(f"{fs.path}: {len(absent)} videos lack features for {list(keys)}, e.g. {absent[:5]}")
    found = [p for p in probed if p is not None]
    use = [p.video for p in found]
    counts = [p.n if isinstance(p.rows, slice) else int(np.count_nonzero(p.rows)) for p in found]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])
    feats: dict[str, np.ndarray] = {}
    fps: dict[str, dict[str, Any]] = {}
    for j, k in enumerate(keys):
        dim = None
        for p in found:
            fp, shp = fs.fingerprint(p.video, k, p.sts[j]), fs.feature_shape(p.video, k, p.sts[j])
            if shp[0] != p.n:
                raise fs.damaged(p.video, f"feat/{k}", f"{shp[0]} rows, its index has {p.n}")
            if k not in fps:
                fps[k], dim = fp, shp[1]
            elif fp != fps[k] and not same_features(fps[k], fp):  # equal dicts: the same features
                raise AbawError(f"{fs.path}: backbone {k!r} has different fingerprints across videos "
                                f"(e.g. {use[0]!r} vs {p.video!r}); re-extract with --overwrite")
            elif shp[1] != dim:
                raise AbawError(f"{fs.path}: backbone {k!r} has {shp[1]}-d features in {p.video!r}, "
                                f"{dim}-d elsewhere")
        feats[k] = np.empty((n, dim), dtype=np.float16) if use else np.zeros((0, 0), np.float16)

    def read(i: int) -> None:  # the index (unless read) and every backbone of one video
        p = found[i]
        if p.index is None:
            p.index = fs.read_index(p.video, light=True, attrs=False, state=p.vst)
        lo, hi = offsets[i], offsets[i + 1]
        for k, st in zip(keys, p.sts):
            if isinstance(p.rows, slice):
                fs.read_features(p.video, k, feats[k][lo:hi], st)
            else:
                feats[k][lo:hi] = fs.read_features(p.video, k, state=st)[p.rows]

    with ThreadPoolExecutor(_threads(len(use))) as pool:  # biggest first: the threads finish together
        list(pool.map(read, sorted(range(len(use)), key=lambda i: -counts[i])))

    def cat(name: str, dtype) -> np.ndarray:
        xs = [getattr(p.index, name)[p.rows] for p in found]
        return np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(0, dtype)

    return FeatureTable(
        keys=keys,
        videos=tuple(use),
        video_idx=np.repeat(np.arange(len(use), dtype=np.int32), counts),
        frame=cat("frame", np.int32),
        face=cat("face", bool),
        timestamp=cat("timestamp", np.float64),
        feats=feats,
        fingerprints=fps,
        store=str(fs.path),
    )
