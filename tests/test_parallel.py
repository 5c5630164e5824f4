"""The job engine: local worker slots and a loopback Dask cluster give the same results."""

from __future__ import annotations

import os

import pytest

from abaw.parallel import Plan, ordered, plan_slots, run_jobs, worker_device


def _square(x: int) -> tuple[int, str, int]:
    return x * x, worker_device("none"), os.getpid()


def test_plan_on_cpu():
    p = plan_slots(0, "cpu", n_jobs_wanted=100)
    assert p.jobs == (os.cpu_count() or 1) and set(p.slots) == {"cpu"}
    assert plan_slots(8, "cpu", n_jobs_wanted=3).jobs == 3
    assert plan_slots(1, "auto").slots == ("cpu",)


def test_sequential_and_pool_agree():
    calls = [(_square, (i,), {}) for i in range(6)]
    seq = ordered(run_jobs(Plan(("cpu",), 1), calls), len(calls))
    par = ordered(run_jobs(Plan(("cpu", "cpu"), 1), calls), len(calls))
    assert [r[0] for r in seq] == [r[0] for r in par] == [i * i for i in range(6)]
    assert {r[1] for r in par} == {"cpu"}
    assert os.getpid() not in {r[2] for r in par} and len({r[2] for r in par}) <= 2  # at most 2 workers, reused
    assert {r[2] for r in seq} == {os.getpid()}


def test_dask_cluster_on_loopback():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster:
        calls = [(_square, (i,), {}) for i in range(5)]
        out = ordered(run_jobs(Plan((), 1, cluster.scheduler_address), calls), len(calls))
    assert [r[0] for r in out] == [i * i for i in range(5)]
