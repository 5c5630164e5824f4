"""How the runs of a search execute: on every CPU core, every GPU, or a Dask cluster.

The leaderboard side of a search (`runner.py`) hands this module a list of `Run`s (one
config on one split, in a run folder) and gets back one result record per run, in the
same order, whatever ran where:

- `plan_for` decides the workers (`abaw.parallel.plan_slots`): `--jobs N` configs at once,
  on CPU N processes with the cores split between them, on GPUs spread round-robin over
  the visible devices (several small head models per GPU; `--jobs 0`/`-1` = as many as
  fit); `--scheduler tcp://HOST:8786` sends them to a Dask cluster instead.
- Each worker process loads the features once (`_table`, kept for the next run).
- Every run first claims its folder (`abaw.claims`): a run held by a live worker of
  another search is waited for (then read, not retrained), a run whose holder died is
  taken over and resumed, and a worker of this search that dies (killed, out of memory)
  has its runs retried up to `MAX_TRIES` times.

A run's result depends only on its config, seed and data, not on where it ran: on CPU a
search with `--jobs 2` gives the same leaderboard, bit for bit, as `--jobs 1` (tested),
as long as each run gets the same number of torch threads (`--set threads=N`).
"""

from __future__ import annotations

import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from abaw.errors import AbawError
from abaw.parallel import Plan, plan_slots, run_jobs, worker_device

MAX_TRIES = 3  # a run whose worker died this many times is reported as failed
POLL_S = 2.0  # how often a search looks again at runs held by another search


@dataclass(frozen=True)
class Run:
    """One config on one split, trained in `run_dir`."""

    config: str  # config id
    run_dir: Path
    cfg: dict[str, Any]  # the TrainConfig as a dict
    train_ann: Any
    val_ann: Any


def plan_for(jobs: int, scheduler: str | None, device: str, n_runs: int, store: str, keys: tuple[str, ...],
             videos: tuple[str, ...]) -> Plan:
    """The workers for `n_runs` runs; on GPUs, how many fit counts the features' size."""
    if scheduler:
        if not scheduler.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            raise AbawError(f"--scheduler {scheduler!r}: give the scheduler's address, e.g. tcp://HOST:8786")
        return plan_slots(jobs, device, scheduler=scheduler)
    if jobs < -1:
        raise AbawError(f"--jobs {jobs}: give a number of parallel runs, or 0 / -1 for as many as fit")
    size = _feature_bytes(store, keys, videos) if device != "cpu" and _has_cuda() else 0
    return plan_slots(jobs, device, n_jobs_wanted=n_runs, bytes_per_job=size)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _feature_bytes(store: str, keys: tuple[str, ...], videos: tuple[str, ...]) -> int:
    from abaw.cache.store import FeatureStore

    fs = FeatureStore(store, "r")
    total = 0
    for v in videos:
        for k in keys:
            try:
                n, d = fs.feature_shape(v, k)[:2]
            except AbawError:
                continue
            total += 2 * n * d
    return total


def execute(runs: list[Run], plan: Plan, store: str, keys: tuple[str, ...], videos: tuple[str, ...], *,
            progress: bool = True, log: Callable[[str], None] = print, poll: float = POLL_S) -> list[dict[str, Any]]:
    """Train every run under `plan`; one record per run, in order: {"run", "result", "seconds"}
    or {"run", "error"}."""
    from tqdm.auto import tqdm

    threads = plan.threads if plan.jobs > 1 else 0
    args = [(r.cfg, str(r.run_dir), store, keys, videos, r.train_ann, r.val_ann, threads) for r in runs]
    results: list[dict[str, Any] | None] = [None] * len(runs)
    tries = [0] * len(runs)
    pending = list(range(len(runs)))
    told_wait = False
    busy_by: dict[int, str] = {}
    with tqdm(total=len(runs), desc="search", unit="run", disable=not progress) as bar:
        while pending:
            busy: list[int] = []
            try:
                for j, rec in run_jobs(plan, [(_claimed_run, args[i], {}) for i in pending]):
                    i = pending[j]
                    if "busy" in rec:
                        busy.append(i)
                        busy_by[i] = rec["busy"]
                        continue
                    results[i] = rec
                    bar.update()
            except (BrokenProcessPool, _KilledWorker()) as e:
                lost = [i for i in pending if results[i] is None and i not in busy]
                log(f"search: a worker died ({type(e).__name__}); retrying its {len(lost)} unfinished run(s)")
                for i in lost:
                    tries[i] += 1
                    if tries[i] >= MAX_TRIES:
                        results[i] = {"run": str(runs[i].run_dir),
                                      "error": f"its worker died {MAX_TRIES} times (killed or out of memory?)"}
                        bar.update()
            if busy and not told_wait:
                log(f"search: waiting for {len(busy)} run(s) held by another worker, e.g. {runs[busy[0]].run_dir}"
                    f" ({busy_by.get(busy[0], 'another worker')})")
                told_wait = True
            progressed = len(busy) < len(pending)
            pending = [i for i in pending if results[i] is None]
            if pending and not progressed:  # all left are held by other workers: look again soon
                time.sleep(poll)
    return [r for r in results if r is not None]


def _KilledWorker() -> type[BaseException]:
    """distributed's KilledWorker (a task's workers died too often), if installed."""
    try:
        from distributed.scheduler import KilledWorker

        return KilledWorker
    except ImportError:
        return BrokenProcessPool


# ------------------------------------------------------------------ in the workers

_TABLES: dict[tuple, Any] = {}


def _table(store: str, keys: tuple[str, ...], videos: tuple[str, ...]):
    """Features for the search, loaded once per worker process."""
    from abaw.cache.store import load_features

    k = (store, keys, videos)
    if k not in _TABLES:
        _TABLES.clear()
        _TABLES[k] = load_features(store, keys, videos)
    return _TABLES[k]


def _claimed_run(cfg_dict: dict[str, Any], run_dir: str, store: str, keys: tuple[str, ...],
                 videos: tuple[str, ...], train_ann: Any, val_ann: Any, threads: int) -> dict[str, Any]:
    """Train one run if its folder can be claimed; {"busy": holder} when another worker holds it."""
    from abaw.claims import read_claim, try_claim

    claim = try_claim(run_dir)
    if claim is None:
        h = read_claim(run_dir)
        return {"run": run_dir, "busy": h.describe() if h else "another worker"}
    with claim:
        return _train_one(cfg_dict, run_dir, store, keys, videos, train_ann, val_ann, threads)


def _train_one(cfg_dict: dict[str, Any], run_dir: str, store: str, keys: tuple[str, ...],
               videos: tuple[str, ...], train_ann: Any, val_ann: Any, threads: int = 0) -> dict[str, Any]:
    from abaw.pipeline.train.config import TrainConfig
    from abaw.pipeline.train.loop import train

    cfg = TrainConfig.from_dict(cfg_dict)
    slot = worker_device("")
    if slot and cfg.device in ("auto", "cuda"):
        cfg = cfg.with_(device=slot)  # device and threads are runtime settings: never compared on resume
    if threads and cfg.threads == 0:
        cfg = cfg.with_(threads=threads)
    t0 = time.perf_counter()
    try:
        run = train(cfg, _table(store, keys, videos), train_ann, val_ann, run_dir, resume=True, progress=False)
    except AbawError as e:
        return {"run": run_dir, "error": str(e)}
    return {"run": run_dir, "result": run.result.record(), "seconds": time.perf_counter() - t0}
