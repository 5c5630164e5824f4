"""`abaw cache verify`: check every unit of a cache, name the damaged ones, optionally delete them.

A marked unit is checked fully: every file present with its size, metadata unchanged,
each chunk's crc32c, each array's content hash, features finite. A legacy unit (written
before checksums) can only be decoded and checked for finiteness: it is reported as
legacy/unverifiable with the command that upgrades it. `repair=True` deletes exactly
the damaged units (a damaged index takes its video's features with it), so rerunning
`abaw extract` recomputes exactly those.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abaw.cache import integrity
from abaw.cache.store import FeatureStore
from abaw.errors import AbawError


@dataclass(frozen=True)
class Problem:
    """A damaged unit: the video's index (`key` None) or one backbone's features."""

    video: str
    key: str | None
    array: str  # the damaged array, as a path inside the video ('frame', 'feat/<key>', ...)
    reason: str


@dataclass(frozen=True)
class VerifyResult:
    store: str
    videos: int
    units: int
    verified: int
    legacy: tuple[str, ...]  # units without checksums ('<video>' or '<video>/feat/<key>')
    damaged: tuple[Problem, ...]
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["damaged"] = [asdict(p) for p in self.damaged]
        d["legacy"] = list(self.legacy)
        return d

    def format(self) -> str:
        lines = [f"{self.store}: {self.videos} videos, {self.units} units: {self.verified} verified, "
                 f"{len(self.legacy)} legacy (unverifiable), {len(self.damaged)} damaged"]
        for p in self.damaged:
            what = "REMOVED" if self.repaired else "DAMAGED"
            lines.append(f"{what} video {p.video!r}, array {p.array!r}: {p.reason}")
        if self.legacy:
            lines.append(f"legacy units have no checksums (written before abaw's integrity markers), e.g. "
                         f"{', '.join(self.legacy[:3])}; to upgrade: abaw cache export {self.store} all.h5 && "
                         f"abaw cache import all.h5 NEW_STORE")
        if self.damaged and not self.repaired:
            lines.append(f"run `abaw cache verify {self.store} --repair` to delete the damaged units, then rerun "
                         "`abaw extract` (it redoes exactly those)")
        elif self.damaged:
            lines.append("rerun `abaw extract` with the same inputs and backbones to redo the removed units")
        return "\n".join(lines)


def _check_legacy(fs: FeatureStore, video: str, key: str | None) -> None:
    """Decode a legacy unit whole (raises the store's one-line damage error)."""
    if key is None:
        fs.read_index(video)
        for name in ("box", "landmarks", "score"):
            fs.read_array(video, name)
    else:
        fs.read_features(video, key)


def _check(fs: FeatureStore, video: str, key: str | None) -> tuple[str, Problem | None]:
    """('ok' | 'legacy' | 'damaged', the problem)."""
    unit = fs.path / "videos" / video if key is None else fs.path / "videos" / video / "feat" / key
    label = (lambda a: a) if key is None else (lambda a: f"feat/{key}" if a == "." else f"feat/{key}/{a}")
    st = integrity.unit_state(unit)
    if st.state == "absent":
        return "damaged", Problem(video, key, label("."), "not a complete unit (no zarr.json)")
    if st.state == "damaged":
        return "damaged", Problem(video, key, label(st.array), st.reason)
    if st.state == "ok":
        try:
            integrity.verify_unit(unit, st.marker, finite=("." if key else "",))
        except integrity.Damage as d:
            return "damaged", Problem(video, key, label(d.array), d.reason)
        return "ok", None
    try:
        _check_legacy(fs, video, key)
    except AbawError as e:
        reason = str(e).split(" is damaged (", 1)[-1].split("); run", 1)[0] if " is damaged (" in str(e) \
            else str(e).split(": ", 1)[-1]
        return "damaged", Problem(video, key, label("."), reason)
    return "legacy", None


def verify_store(store: str | os.PathLike, repair: bool = False) -> VerifyResult:
    """Check every unit of the cache at `store`; with `repair`, delete the damaged ones
    (under the store's write lock)."""
    path = Path(store)
    fs = FeatureStore(path, "a" if repair else "r")
    try:
        vroot = path / "videos"
        videos = sorted(p.name for p in vroot.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if vroot.exists() else []
        units = verified = 0
        legacy: list[str] = []
        damaged: list[Problem] = []
        for v in videos:
            units += 1
            state, prob = _check(fs, v, None)
            if prob is not None:
                damaged.append(prob)
                continue  # the index is redone with all of its features
            verified += state == "ok"
            if state == "legacy":
                legacy.append(v)
            fdir = vroot / v / "feat"
            for k in sorted(p.name for p in fdir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                    if fdir.exists() else []:
                units += 1
                state, prob = _check(fs, v, k)
                if prob is not None:
                    damaged.append(prob)
                verified += state == "ok"
                if state == "legacy":
                    legacy.append(f"{v}/feat/{k}")
        if repair:
            for p in damaged:
                if p.key is None:
                    fs.delete_video(p.video)
                else:
                    fs.delete_features(p.video, p.key)
        return VerifyResult(store=str(path), videos=len(videos), units=units, verified=verified,
                            legacy=tuple(legacy), damaged=tuple(damaged), repaired=repair and bool(damaged))
    finally:
        fs.close()


__all__ = ["Problem", "VerifyResult", "verify_store"]
