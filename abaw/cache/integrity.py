"""Integrity of cache units: the done-marker, cheap completeness checks, checksummed reads.

Every unit (a video's index group, one backbone's feature array) written by this version
holds a done-marker, `.abaw_done.json`, written inside the staged unit before the atomic
rename. It records, for each array, its shape, dtype, chunk rows and the sha256 of its
content; the size of every file of the unit; and the sha256 of each `zarr.json`.

Arrays are stored with the codec chain `bytes(little) -> crc32c`, every chunk written
(also all-zero ones), so a chunk file is the raw rows followed by a 4-byte crc32c of
them. That makes reading as fast as reading the bytes (no decompression: float16
features compress by ~1.1-1.4x with zstd, see `bench/bench_cache.py`) and every chunk
self-checking. Checks, cheapest first:

- `check_files`: every file the marker lists exists with its size, and each `zarr.json`
  has its recorded hash (on every load: a stat per file, a read of the small metadata);
- `read_array`: every chunk's crc32c while reading (on every load);
- `verify_unit`: additionally the content hash of each array (`abaw cache verify`).

Units without a marker are *legacy* (written before checksums: zstd, no crc32c) and are
read through zarr; a unit without a marker whose arrays use crc32c lost its marker and
is damaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MARKER = ".abaw_done.json"
MARKER_VERSION = 1
ENDIAN = "little"


class Damage(Exception):
    """A unit is damaged: `array` (a path inside the unit, '.' for the unit itself) and why."""

    def __init__(self, array: str, reason: str):
        self.array = array
        self.reason = reason
        super().__init__(f"{array}: {reason}")


def array_kwargs() -> dict[str, Any]:
    """zarr `create_array` keyword arguments for checksummed, uncompressed arrays."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    return {"serializer": BytesCodec(endian=ENDIAN), "compressors": (Crc32cCodec(),), "filters": None,
            "config": {"write_empty_chunks": True}}


def content_hash(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return hashlib.sha256(memoryview(arr).cast("B") if arr.size else b"").hexdigest()


def _sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_marker(unit: Path, arrays: dict[str, tuple[np.ndarray, int]],
                 partial: dict[str, Any] | None = None) -> None:
    """Write the done-marker of a staged unit. `arrays`: path inside the unit ('.' for an
    array unit) -> (the array as written, chunk rows). `partial`: the unit is complete but
    holds only the frames before a source's damage (`extract --allow-partial`)."""
    files: dict[str, int] = {}
    meta: dict[str, str] = {}
    for root, _, names in os.walk(unit):
        for n in names:
            p = Path(root) / n
            rel = p.relative_to(unit).as_posix()
            if rel == MARKER:
                continue
            files[rel] = p.stat().st_size
            if n == "zarr.json":
                meta[rel] = _sha_file(p)
    info = {name: {"shape": list(a.shape), "dtype": a.dtype.newbyteorder("<").str, "chunk_rows": int(rows),
                   "sha256": content_hash(a)} for name, (a, rows) in arrays.items()}
    doc = {"abaw_done": MARKER_VERSION, "arrays": info, "files": dict(sorted(files.items())), "meta": meta,
           **({"partial": partial} if partial else {})}
    (unit / MARKER).write_text(json.dumps(doc, indent=1), encoding="utf-8")


def _read_small(path: str) -> bytes:
    """A small file's bytes, to its end (os-level calls: open, read, read, close; about
    half the time of `open().read()`, and loading reads thousands)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts = []
        while part := os.read(fd, 1 << 16):
            parts.append(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_marker(unit: Path | str) -> dict[str, Any] | None:
    """The unit's marker, None when it has none (legacy); Damage when it is unreadable."""
    try:
        text = _read_small(os.path.join(os.fspath(unit), MARKER))
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        doc = json.loads(text)
        if doc.get("abaw_done") != MARKER_VERSION or not isinstance(doc.get("arrays"), dict):
            raise ValueError("unknown version")
        return doc
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise Damage(".", "done-marker is unreadable") from None


def _owner(rel: str, marker: dict[str, Any]) -> str:
    parts = rel.split("/")
    for i in range(len(parts), 0, -1):
        if "/".join(parts[:i]) in marker["arrays"]:
            return "/".join(parts[:i])
    return "." if "." in marker["arrays"] else rel  # a file of the unit itself (its zarr.json)


def check_files(unit: Path | str, marker: dict[str, Any], light: bool = False) -> dict[str, bytes]:
    """Every file the marker lists exists with its recorded size; metadata unchanged.
    Returns the metadata files' bytes (path inside the unit -> bytes). `light` checks only
    the unit's own zarr.json (for loading: `read_array` checks the chunks it reads)."""
    base = os.fspath(unit)
    for rel, size in ({} if light else marker["files"]).items():
        try:
            got = os.stat(os.path.join(base, rel)).st_size
        except FileNotFoundError:
            raise Damage(_owner(rel, marker), f"{rel} is missing") from None
        if got != size:
            raise Damage(_owner(rel, marker), f"{rel} has {got} bytes, expected {size}")
    meta = {}
    for rel, sha in marker["meta"].items():
        if light and rel != "zarr.json":
            continue
        try:
            meta[rel] = _read_small(os.path.join(base, rel))
        except FileNotFoundError:
            raise Damage(_owner(rel, marker), f"{rel} is missing") from None
        if hashlib.sha256(meta[rel]).hexdigest() != sha:
            raise Damage(_owner(rel, marker), f"{rel} was changed")
    return meta


def has_crc(unit: Path) -> bool:
    """Whether arrays of an unmarked unit use crc32c (then the marker was lost: damage)."""
    for p in [unit / "zarr.json", *unit.glob("*/zarr.json")]:
        try:
            if b'"crc32c"' in p.read_bytes():
                return True
        except OSError:
            pass
    return False


def _chunk_file(rel: str, i: int, ndim: int) -> str:
    base = "" if rel == "." else rel + "/"
    return base + "c/" + "/".join([str(i)] + ["0"] * (ndim - 1))


def read_array(unit: Path, rel: str, info: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """Read a marked array straight from its chunk files, checking each chunk's crc32c.
    `out`: a C-contiguous destination of the array's shape and dtype (else one is made)."""
    import google_crc32c

    base = os.fspath(unit)
    shape = tuple(info["shape"])
    dtype = np.dtype(info["dtype"])
    if out is None:
        out = np.empty(shape, dtype)
    n = shape[0] if shape else 0
    rows = max(1, int(info["chunk_rows"]))
    row_bytes = dtype.itemsize * math.prod(shape[1:])
    flat = out.reshape(-1).view(np.uint8)  # a view: readinto fills `out`
    ndim = len(shape)
    for i, lo in enumerate(range(0, n, rows)):
        hi = min(n, lo + rows)
        name = _chunk_file(rel, i, ndim)
        want = rows * row_bytes  # edge chunks are stored whole (padded)
        dst = flat[lo * row_bytes:hi * row_bytes]
        pad = bytearray(want - len(dst))
        tail = bytearray(5)  # the 4-byte crc32c, and one byte more to see a file that is too long
        try:
            fd = os.open(os.path.join(base, name), os.O_RDONLY)
        except FileNotFoundError:
            raise Damage(rel, f"{name} is missing") from None
        try:  # one system call: the rows straight into the table, the padding and the checksum aside
            got = os.readv(fd, [dst, pad, tail] if pad else [dst, tail])
            if 0 < got < want + 5 and got < len(dst):  # a short read (rare): finish it
                got += os.readv(fd, [dst[got:], pad, tail] if pad else [dst[got:], tail])
        finally:
            os.close(fd)
        if got != want + 4:
            raise Damage(rel, f"{name} is truncated or too long")
        crc = google_crc32c.value(dst)
        if pad:
            crc = google_crc32c.extend(crc, bytes(pad))
        if crc != int.from_bytes(tail[:4], "little"):
            raise Damage(rel, f"{name} fails its crc32c checksum")
    return out


def verify_unit(unit: Path, marker: dict[str, Any], finite: tuple[str, ...] = ()) -> None:
    """Full check of a marked unit: files, checksums, content hashes (and finiteness of
    the arrays named in `finite`)."""
    check_files(unit, marker)
    for rel, info in marker["arrays"].items():
        a = read_array(unit, rel, info)
        if content_hash(a) != info["sha256"]:
            raise Damage(rel, "content differs from its done-marker hash")
        if rel in finite and not all_finite(a):
            raise Damage(rel, "holds non-finite values")


def all_finite(a: np.ndarray) -> bool:
    if a.dtype == np.float16:  # exponent bits all set = inf / NaN; ~2x faster than isfinite
        return not bool(((np.ascontiguousarray(a).view(np.uint16) & 0x7C00) == 0x7C00).any())
    return bool(np.isfinite(a).all()) if a.dtype.kind == "f" else True


@dataclass(frozen=True)
class UnitState:
    """`state`: 'ok' (marked, files complete), 'legacy' (no marker, no checksums),
    'damaged' (with `array` and `reason`) or 'absent'."""

    state: str
    marker: dict[str, Any] | None = None
    array: str = "."
    reason: str = ""
    meta: dict[str, bytes] | None = None  # the checked zarr.json files (marked units)


def unit_state(unit: Path | str, light: bool = False) -> UnitState:
    """Cheap state of a unit directory (no chunk is read; `light`: see `check_files`)."""
    base = os.fspath(unit)
    try:  # the marker first: a marked unit (the usual case) costs no extra stat
        marker = read_marker(base)
        if marker is None:
            if not os.path.exists(os.path.join(base, "zarr.json")):
                return UnitState("absent")
            if has_crc(Path(unit)):
                return UnitState("damaged", None, ".", "done-marker is missing")
            return UnitState("legacy")
        return UnitState("ok", marker, meta=check_files(base, marker, light))
    except Damage as d:
        if not os.path.exists(os.path.join(base, "zarr.json")):
            return UnitState("damaged", None, ".", "zarr.json is missing")
        return UnitState("damaged", None, d.array, d.reason)
