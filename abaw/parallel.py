"""Run many independent jobs (search configs) on every core, every GPU, or a Dask cluster.

- **Local**: a pool of worker processes (spawned, so CUDA and thread pools start clean).
  Each worker owns one *slot*, a device it keeps for its whole life (`cuda:0`, `cuda:1`,
  ... round-robin, several slots per GPU; or `cpu`), so whatever a job caches in the worker
  (features loaded once, kept on the device) is reused by the next job on that slot.
- **Cluster**: `scheduler="tcp://HOST:8786"` sends the jobs to a Dask distributed cluster
  through joblib's Dask backend (`pip install 'abaw[dask]'`). Each Dask worker resolves
  its own device (`auto`: the GPU that `dask-cuda` made visible to it, else CPU).

Jobs are plain picklable callables with arguments; results come back in submission order.
Inside a job, `worker_device()` tells the slot's device.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from abaw.errors import AbawError

_SLOT_ENV = "ABAW_WORKER_DEVICE"
_THREADS_ENV = "ABAW_WORKER_THREADS"
DEFAULT_PER_GPU = 4  # small head models per GPU when memory does not say otherwise


def worker_device(default: str = "auto") -> str:
    """The device of this worker's slot (`default` outside a pool)."""
    return os.environ.get(_SLOT_ENV, default)


@dataclass(frozen=True)
class Plan:
    """Where the jobs of one call run."""

    slots: tuple[str, ...]  # one device per local worker; empty with a scheduler
    threads: int  # torch threads per worker (CPU)
    scheduler: str | None = None
    note: str = ""

    @property
    def jobs(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        if self.scheduler:
            return f"Dask cluster at {self.scheduler}"
        return self.note or f"{self.jobs} job(s)"


def plan_slots(jobs: int, device: str = "auto", *, n_jobs_wanted: int | None = None,
               bytes_per_job: int = 0, scheduler: str | None = None) -> Plan:
    """How many workers on which devices.

    `jobs`: 0 or -1 = sensible default (one per CPU core on CPU; on GPUs as many per GPU as
    fit in memory, `DEFAULT_PER_GPU` at most, counting `bytes_per_job` of features plus
    ~1.5 GiB of activations/context per job). `n_jobs_wanted` caps the workers at the
    number of jobs there are.
    """
    if scheduler:
        return Plan((), 0, scheduler)
    cpus = os.cpu_count() or 1
    cap = max(1, n_jobs_wanted) if n_jobs_wanted is not None else None
    dev = device if device not in (None, "") else "auto"
    gpus: list[str] = []
    if dev.startswith("cuda") or dev == "auto":
        import torch

        if torch.cuda.is_available():
            if dev in ("auto", "cuda"):
                gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            else:
                gpus = [dev]
        elif dev.startswith("cuda"):
            raise AbawError(f"--device {dev}: CUDA is not available on this machine")
    if not gpus:
        n = cpus if jobs in (0, -1) else max(1, jobs)
        if cap is not None:
            n = min(n, cap)
        threads = max(1, cpus // n)
        return Plan(tuple(["cpu"] * n), threads, None, f"{n} CPU job(s), {threads} thread(s) each")
    fit = DEFAULT_PER_GPU
    import torch

    per_job = bytes_per_job + int(1.5 * 2**30)
    free = min(torch.cuda.mem_get_info(torch.device(g))[0] for g in gpus)
    fit = max(1, min(DEFAULT_PER_GPU, int(free * 0.8 // per_job)))
    n = len(gpus) * fit if jobs in (0, -1) else max(1, jobs)
    if cap is not None:
        n = min(n, cap)
    slots = tuple(gpus[i % len(gpus)] for i in range(n))
    per = math.ceil(n / len(gpus))
    note = (f"{n} job(s) on {len(gpus)} GPU(s), up to {per} per GPU "
            f"({fit} fit in {free / 2**30:.0f} GiB free at {per_job / 2**30:.1f} GiB each)")
    return Plan(slots, max(1, cpus // n), None, note)


def _init_worker(counter, slots: tuple[str, ...], threads: int) -> None:
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    os.environ[_SLOT_ENV] = slots[i % len(slots)]
    os.environ[_THREADS_ENV] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(threads)


def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def run_jobs(plan: Plan, calls: Sequence[tuple[Callable, tuple, dict]]) -> Iterator[tuple[int, Any]]:
    """Run `calls` [(fn, args, kwargs)] under `plan`; yields (index, result) as they finish.

    One job in one slot runs in this process (no pool), so a sequential run is exactly the
    code path of a single worker.
    """
    if not calls:
        return
    if plan.scheduler:
        yield from _run_dask(plan.scheduler, calls)
        return
    if plan.jobs <= 1:
        slot = plan.slots[0] if plan.slots else "cpu"
        old = os.environ.get(_SLOT_ENV)
        os.environ[_SLOT_ENV] = slot
        try:
            for i, (fn, a, kw) in enumerate(calls):
                yield i, fn(*a, **kw)
        finally:
            if old is None:
                os.environ.pop(_SLOT_ENV, None)
            else:
                os.environ[_SLOT_ENV] = old
        return
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(max_workers=plan.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(counter, plan.slots, plan.threads)) as ex:
        futs = {ex.submit(_call, fn, a, kw): i for i, (fn, a, kw) in enumerate(calls)}
        for f in as_completed(futs):
            yield futs[f], f.result()


def _run_dask(scheduler: str, calls: Sequence[tuple[Callable, tuple, dict]]) -> Iterator[tuple[int, Any]]:
    try:
        from distributed import Client
        from joblib import Parallel, delayed, parallel_config
    except ImportError:
        raise AbawError("--scheduler needs dask distributed: pip install 'abaw[dask]'") from None
    try:
        client = Client(scheduler, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise AbawError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from None
    try:
        with parallel_config(backend="dask"):
            gen = Parallel(n_jobs=-1, return_as="generator_unordered")(
                delayed(_indexed)(i, fn, a, kw) for i, (fn, a, kw) in enumerate(calls))
            yield from gen
    finally:
        client.close()


def _indexed(i: int, fn: Callable, args: tuple, kwargs: dict) -> tuple[int, Any]:
    return i, fn(*args, **kwargs)


def ordered(results: Iterable[tuple[int, Any]], n: int) -> list[Any]:
    """Collect (index, result) pairs into a list in index order."""
    out: list[Any] = [None] * n
    for i, r in results:
        out[i] = r
    return out
