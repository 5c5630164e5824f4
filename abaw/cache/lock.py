"""One writer per store: an exclusive `fcntl.flock` on `STORE/.lock`, held per process.

Opening a store for writing takes the lock (without waiting); when another process holds
it the open fails with "STORE is being written by PID on HOST". Inside one process all
writers of a store share one lock (reference counted). The ranks of one torchrun job
share it too: rank 0 takes it and records the job (MASTER_ADDR:MASTER_PORT and
TORCHELASTIC_RUN_ID); other ranks of that job, which open the store after rank 0, check
the record instead of locking. The lock goes with the process (the kernel drops a flock
when its holder dies), so a killed writer never leaves the store locked.

Staging entries are named `<host>-<pid>-<uuid>`; `stale_staging` lists those whose writer
is dead (never those of a live process on this host).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from abaw.errors import AbawError
from abaw.io import pid_alive

LOCK_NAME = ".lock"
_HELD: dict[str, list] = {}  # real path -> [fd, refcount]
_MUTEX = threading.Lock()


def host() -> str:
    return socket.gethostname().replace("-", "_") or "localhost"


def job_token() -> str:
    """Identifies this torchrun job ('' outside one)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return ""
    return "{}:{}/{}".format(os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""),
                             os.environ.get("TORCHELASTIC_RUN_ID", ""))


def _holder(path: Path) -> tuple[str, str, str]:
    try:
        parts = (path / LOCK_NAME).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        parts = []
    parts += ["?", "?", ""]
    return parts[0] or "?", parts[1] or "?", parts[2]


def acquire(path: Path) -> str:
    """Take (or share) the write lock of the store at `path`; returns the key for `release`."""
    import fcntl

    key = os.path.realpath(path)
    with _MUTEX:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        token = job_token()
        if token and int(os.environ.get("RANK", "0") or 0) > 0:
            pid, hst, held_by = _holder(path)
            if held_by == token:
                _HELD[key] = [None, 1]
                return key
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, hst, _ = _holder(path)
            raise AbawError(f"{path} is being written by PID {pid} on {hst}; wait for it to finish "
                            "(or write into another store)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{host()}\n{token}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        return key


def release(key: str) -> None:
    with _MUTEX:
        e = _HELD.get(key)
        if e is None:
            return
        e[1] -= 1
        if e[1] <= 0:
            del _HELD[key]
            if e[0] is not None:
                os.close(e[0])  # closing the descriptor drops the flock


def owns(path: Path) -> bool:
    """Whether this process holds the exclusive lock itself (not shared from rank 0)."""
    e = _HELD.get(os.path.realpath(path))
    return e is not None and e[0] is not None


def staging_name(uid: str) -> str:
    return f"{host()}-{os.getpid()}-{uid}"


def writer_alive(name: str) -> bool:
    """Whether the writer that made staging entry `name` may still be running: a live pid
    on this host (also for the older `<pid>-<uuid>` names). Trash entries (`old-`, `del-`)
    and entries of other hosts count as dead: the caller holds the store's lock."""
    parts = name.split("-")
    if len(parts) >= 3 and parts[0] == host() and parts[1].isdigit():
        return pid_alive(int(parts[1]))
    if len(parts) == 2 and parts[0].isdigit():
        return pid_alive(int(parts[0]))
    return False
