"""Atomic claims on run folders, so parallel workers never train the same config twice.

A worker that wants to train a config first *claims* its run folder by creating
`RUN/.claim` with `O_CREAT | O_EXCL` (atomic on local filesystems and on NFSv3+ / Lustre /
GPFS, the shared filesystems of clusters). The claim records who holds it (host, PID, a
random token) and is refreshed by a heartbeat thread while the work runs. Another worker
that finds a claim skips the config, unless the claim is **stale**: its holder is a dead
process on this host, or its heartbeat is older than `ttl` seconds (a killed worker on
another node). A stale claim is broken by renaming it away (atomic, so two workers that
both see it stale cannot both win) and then claimed afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from abaw.io import pid_alive

CLAIM_FILE = ".claim"
DEFAULT_TTL = 120.0  # seconds without a heartbeat before a claim from another host is stale


@dataclass(frozen=True)
class Holder:
    """Who holds a claim."""

    host: str
    pid: int
    token: str
    since: float

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}"


def read_claim(run_dir: str | os.PathLike) -> Holder | None:
    """The holder of `run_dir`'s claim, or None (no claim, or an unreadable half-written one)."""
    return read_claim_file(Path(run_dir) / CLAIM_FILE)


def read_claim_file(path: Path) -> Holder | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Holder(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(run_dir: str | os.PathLike, ttl: float = DEFAULT_TTL, now: float | None = None) -> bool:
    """Whether the claim on `run_dir` is held by nobody alive (see the module doc)."""
    path = Path(run_dir) / CLAIM_FILE
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    h = read_claim(run_dir)
    now = time.time() if now is None else now
    if h is not None and h.host == socket.gethostname():
        return not pid_alive(h.pid)
    return now - mtime > ttl


class Claim:
    """A held claim; refreshes its heartbeat until released. Use as a context manager."""

    def __init__(self, run_dir: Path, holder: Holder, heartbeat: float):
        self.run_dir = run_dir
        self.holder = holder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        path = self.run_dir / CLAIM_FILE
        while not self._stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(path)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (only if it is still ours)."""
        self._stop.set()
        self._thread.join(timeout=5)
        cur = read_claim(self.run_dir)
        if cur is not None and cur.token == self.holder.token:
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / CLAIM_FILE).unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def try_claim(run_dir: str | os.PathLike, *, ttl: float = DEFAULT_TTL, heartbeat: float | None = None) -> Claim | None:
    """Claim `run_dir` (created if needed). None when another live worker holds it.

    A stale claim (dead holder) is broken and taken over, so a killed worker's config is
    retried by the next worker that reaches it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM_FILE
    holder = Holder(socket.gethostname(), os.getpid(), secrets.token_hex(8), time.time())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = read_claim(run_dir)
            if not is_stale(run_dir, ttl):
                return None
            broken = run_dir / f"{CLAIM_FILE}.stale.{holder.token}"
            try:
                os.rename(path, broken)  # only one breaker wins the rename
            except FileNotFoundError:
                continue
            took = read_claim_file(broken)
            if seen is not None and (took is None or took.token != seen.token):
                # another worker broke the stale claim and claimed afresh in between: give it back
                with contextlib.suppress(OSError):
                    os.link(broken, path)
                with contextlib.suppress(FileNotFoundError):
                    broken.unlink()
                return None
            with contextlib.suppress(FileNotFoundError):
                broken.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"host": holder.host, "pid": holder.pid, "token": holder.token, "since": holder.since}, f)
            f.flush()
            os.fsync(f.fileno())
        return Claim(run_dir, holder, heartbeat if heartbeat is not None else max(1.0, ttl / 4))
    return None


@contextlib.contextmanager
def claimed(run_dir: str | os.PathLike, **kw: Any) -> Iterator[Claim | None]:
    """`with claimed(dir) as c:` — `c` is None when someone else holds the folder."""
    c = try_claim(run_dir, **kw)
    try:
        yield c
    finally:
        if c is not None:
            c.release()
