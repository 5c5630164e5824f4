"""Small I/O helpers: atomic file writes and JSON with stable formatting."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary file next to `path`; on success fsync and rename it over `path`.

    A crash at any moment leaves either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; a missing or binary file is a one-line AbawError naming it."""
    from abaw.errors import AbawError

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AbawError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise AbawError(f"{os.fspath(path)}: is a folder, expected a file") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def not_utf8(path: str | os.PathLike, e: UnicodeDecodeError):
    """The one-line FormatError for a file that is not UTF-8: byte, offset and line."""
    from abaw.errors import FormatError

    data = e.object if isinstance(e.object, (bytes, bytearray)) else b""
    line = data.count(b"\n", 0, e.start) + 1 if data else None
    byte = f"byte 0x{data[e.start]:02x} " if data and e.start < len(data) else ""
    return FormatError(path, f"not UTF-8 text ({byte}at offset {e.start})", line)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; a missing, binary or malformed file is a one-line error naming it."""
    from abaw.errors import FormatError

    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(path, f"not valid JSON ({e.msg}, column {e.colno})", e.lineno) from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (for stale-lock and stale-claim checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
