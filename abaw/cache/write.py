"""Writing units into a feature cache: staging, done-markers, the atomic rename (a mixin of
`FeatureStore`, see store.py for the layout and guarantees)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from abaw.cache import integrity, lock
from abaw.cache.integrity import unit_state
from abaw.data.labels import MAX_FRAME
from abaw.errors import AbawError

FEATURE_CHUNK_ROWS = 16384


def zarr_module():
    import zarr

    return zarr


class StoreWriter:
    """The writing half of `FeatureStore` (needs its `path`, `_lock`, `_vdir`, `_fdir`,
    `has_video` and `video_attrs`)."""

    path: Path
    _lock: str | None

    def _writable(self) -> None:
        if self._lock is None:
            raise AbawError(f"{self.path}: opened read-only (or closed); open it with mode='a' to write")

    def _staging(self, kind: str = "") -> Path:
        d = self.path / ".staging" / lock.staging_name(kind + uuid.uuid4().hex)
        d.mkdir(parents=True)
        return d

    def clear_staging(self) -> int:
        """Remove leftovers of interrupted writes by dead writers (never a live writer's
        entries). Returns how many were removed."""
        s = self.path / ".staging"
        if not s.exists():
            return 0
        n = 0
        for p in s.iterdir():
            if lock.writer_alive(p.name):
                continue
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    def _trash(self, path: Path) -> None:
        trash = self._staging("del")
        os.replace(path, trash / "unit")
        shutil.rmtree(trash, ignore_errors=True)

    def _install(self, tmp: Path, final: Path, overwrite: bool) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not overwrite and unit_state(final).state in ("ok", "legacy"):
                shutil.rmtree(tmp, ignore_errors=True)
                raise AbawError(f"{final.relative_to(self.path)} already exists in {self.path} (use overwrite)")
            trash = self._staging("old")  # a damaged unit is replaced without asking
            os.replace(final, trash / "unit")
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)

    def write_video(self, video: str, frame: np.ndarray, timestamp: np.ndarray, face: np.ndarray,
                    attrs: dict[str, Any], extra: dict[str, np.ndarray] | None = None,
                    overwrite: bool = False, partial: dict[str, Any] | None = None) -> None:
        """Write one video's index atomically (replacing it drops its features). `partial`
        ({source, decoded, expected, reason}) marks a video kept short of its damage: it is
        recorded in the attrs and the done-marker."""
        self._writable()
        zarr = zarr_module()
        vdir = self._vdir(video)
        frame = np.asarray(frame)
        if frame.size and (frame.min() < 1 or frame.max() > MAX_FRAME):  # int32 below: never wrap
            raise AbawError(f"{self.path}: video {video!r}: frame numbers must lie in 1..{MAX_FRAME} "
                            f"(found {frame.min()}..{frame.max()})")
        frame = frame.astype(np.int32)
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
        written = {}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if len(arr) != n:
                raise ValueError(f"{video}: array {name} has {len(arr)} rows, expected {n}")
            chunks = arr.shape if n else tuple(max(1, d) for d in arr.shape)  # zarr needs chunks >= 1
            a = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks, **integrity.array_kwargs())
            if n:
                a[...] = arr
            written[name] = (arr, chunks[0])
        zarr.open_group(str(tmp / "feat"), mode="w")
        g.attrs.update({**attrs, "n_frames": int(n), "n_faces": int(face.sum()),
                        **({"partial": partial} if partial else {})})
        integrity.write_marker(tmp, written, partial)
        self._install(tmp, vdir, overwrite)
        shutil.rmtree(stage, ignore_errors=True)

    def write_features(self, video: str, key: str, feats: np.ndarray, fingerprint: dict[str, Any],
                       overwrite: bool = False) -> None:
        """Write one backbone's [N, D] features for a video atomically (stored as float16;
        non-finite values are refused)."""
        self._writable()
        zarr = zarr_module()
        fdir = self._fdir(video, key)
        if not self.has_video(video, deep=False):
            raise AbawError(f"{self.path}: write the index of {video!r} before its features")
        n = int(self.video_attrs(video)["n_frames"])
        with np.errstate(over="ignore"):  # beyond float16's range becomes inf: refused below
            feats = np.ascontiguousarray(feats, dtype=np.float16)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"{video}/{key}: features {feats.shape} do not match {n} frames")
        if not integrity.all_finite(feats):
            raise AbawError(f"{self.path}: video {video!r}: {key!r} features hold non-finite values (NaN/inf, "
                            "or beyond float16's range); not stored")
        stage = self._staging()
        tmp = stage / "unit"
        chunks = (max(1, min(n, FEATURE_CHUNK_ROWS)), max(1, feats.shape[1]))
        a = zarr.create_array(str(tmp), shape=feats.shape, dtype="float16", chunks=chunks, **integrity.array_kwargs())
        if n:
            a[...] = feats
        a.attrs["fingerprint"] = fingerprint
        integrity.write_marker(tmp, {".": (feats, chunks[0])})
        self._install(tmp, fdir, overwrite)
        shutil.rmtree(stage, ignore_errors=True)

    def delete_video(self, video: str) -> None:
        self._writable()
        d = self._vdir(video)
        if d.exists():
            self._trash(d)

    def delete_features(self, video: str, key: str) -> None:
        self._writable()
        d = self._fdir(video, key)
        if d.exists():
            self._trash(d)
