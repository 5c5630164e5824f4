"""`abaw search` on several workers: same leaderboard as one job; run folders claimed once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abaw.cache.store import FeatureStore
from abaw.claims import CLAIM_FILE
from abaw.pipeline.search.runner import SearchSettings, run_search
from abaw.pipeline.search.space import space_from_dict

SMALL = {"d_model": 16, "heads": 2, "layers": 1, "window": 8, "batch_frames": 64, "epochs": 2, "min_steps": 0, "lr": 3e-3,
         "patience": 100, "threads": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_split):
    rng = np.random.default_rng(0)
    store = tmp_path_factory.mktemp("search_par") / "c.zarr"
    proj = rng.standard_normal((22, 12)).astype(np.float32)
    with FeatureStore(store, "a") as fs:
        tr = synthetic_split(fs, "t", 4, 48, proj, 2.0, rng)
        va = synthetic_split(fs, "v", 2, 48, proj, 2.0, rng)
    return store, tr, va


SPACE = space_from_dict({"base": SMALL, "grid": {"temporal": ["none", "gru"]}})  # 2 runs: worker start-up dominates


def board(out: Path) -> list[dict]:
    rows = json.loads((out / "leaderboard.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def search(data, out: Path, **kw) -> list[str]:
    store, tr, va = data
    lines: list[str] = []
    run_search(SPACE, store, tr, va, out, SearchSettings(**kw), progress=False, log=lines.append)
    return lines


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("seq") / "s"
    search(data, out, jobs=1)
    return board(out)


def test_two_jobs_give_the_same_leaderboard(data, sequential, tmp_path):
    lines = search(data, tmp_path / "s", jobs=2)
    assert "2 CPU job(s)" in lines[0]
    assert board(tmp_path / "s") == sequential  # bit-identical scores, same ranks
    assert not list((tmp_path / "s").glob("runs/*/" + CLAIM_FILE))  # claims released


def test_dask_cluster_gives_the_same_leaderboard(data, sequential, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster:
        lines = search(data, tmp_path / "s", scheduler=cluster.scheduler_address)
    assert "Dask cluster at tcp://127.0.0.1" in lines[0]
    assert board(tmp_path / "s") == sequential


HOLD = """
import sys, time
from pathlib import Path
from abaw.claims import try_claim
c = try_claim(sys.argv[1])
print("held" if c is not None else "not held", flush=True)
release, cap = Path(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while not release.exists() and time.monotonic() < cap:
    time.sleep(0.05)
c.release()
"""


def test_claimed_runs_are_waited_for_and_dead_claims_retried(data, sequential, tmp_path):
    out = tmp_path / "s"
    runs = [r["runs"][0] for r in sequential]
    # a run held by a live process (another search) is waited for, not trained twice; the holder lets go
    # once the search says it is waiting (whatever order the search reaches the runs in), at most after 60 s
    release = tmp_path / "release"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out / runs[0]), str(release), "60"], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    # a run whose holder died (killed worker) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / runs[1]).mkdir(parents=True)
    import socket

    (out / runs[1] / CLAIM_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                        "token": "x", "since": 0}))
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "held by another worker" in line:
            release.touch()

    store, tr, va = data
    run_search(SPACE, store, tr, va, out, SearchSettings(jobs=1), progress=False, log=log)
    p.wait(timeout=90)
    assert any("waiting for 1 run(s) held by another worker" in ln for ln in lines), lines
    assert board(out) == sequential
    assert not list(out.glob("runs/*/" + CLAIM_FILE))
