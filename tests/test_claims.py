"""Run-folder claims: one holder at a time, stale claims of dead workers are retried."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

from abaw.claims import CLAIM_FILE, is_stale, read_claim, try_claim


def test_claim_is_exclusive_and_released(tmp_path):
    a = try_claim(tmp_path / "run")
    assert a is not None
    assert try_claim(tmp_path / "run") is None  # held by a live process (us)
    assert read_claim(tmp_path / "run").pid == os.getpid()
    a.release()
    assert not (tmp_path / "run" / CLAIM_FILE).exists()
    b = try_claim(tmp_path / "run")
    assert b is not None
    b.release()


def test_dead_local_holder_is_stale_and_taken_over(tmp_path):
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "token": "x", "since": 0}))
    assert is_stale(run)
    c = try_claim(run)
    assert c is not None and c.holder.pid == os.getpid()
    c.release()


def test_remote_holder_stale_only_after_ttl(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM_FILE).write_text(json.dumps({"host": "other-node", "pid": 1, "token": "y", "since": 0}))
    assert not is_stale(run, ttl=60)
    assert try_claim(run, ttl=60) is None
    old = time.time() - 120
    os.utime(run / CLAIM_FILE, (old, old))
    assert is_stale(run, ttl=60)
    c = try_claim(run, ttl=60)
    assert c is not None
    c.release()


def _race(path, q):
    c = try_claim(path)
    q.put(c is not None)
    time.sleep(0.5)
    if c is not None:
        c.release()


def test_many_processes_one_winner(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_race, args=(str(tmp_path / "run"), q)) for _ in range(4)]
    for p in ps:
        p.start()
    wins = [q.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(timeout=60)
    assert sum(wins) == 1
