"""One place for where and how tensors run: device, precision/autocast, distributed setup.

Every command (extract, train-heads, search, finetune, predict) resolves these the same
way:

- `resolve_device("auto")` is the local CUDA device when there is one (`cuda:LOCAL_RANK`
  under torchrun), else the CPU; `cuda` without an index means `cuda:LOCAL_RANK`.
- `resolve_precision("auto", device)` is bf16 on a GPU that has it (else fp16), fp32 on CPU.
- `autocast(device, precision)` is the matching autocast context (a no-op for fp32).
- `DistEnv.from_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (0, 1, 0 without it).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from abaw.errors import AbawError

DEVICES = "auto, cpu, cuda, cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class DistEnv:
    """The process's place in a torchrun job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the process group (and destroys it)

    @classmethod
    def from_env(cls) -> DistEnv:
        try:
            rank = int(os.environ.get("RANK", "0"))
            world = int(os.environ.get("WORLD_SIZE", "1"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise AbawError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
        world = max(1, world)
        if not 0 <= rank < world:
            raise AbawError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def init_group(self, device: torch.device | None = None, *, timeout_h: float = 12.0,
                   backend: str | None = None) -> bool:
        """Join the torchrun process group (`backend`; default NCCL on CUDA, gloo otherwise).
        False when there is nothing to join (one process, no MASTER_ADDR) or a group already
        exists."""
        import torch.distributed as dist

        if self.world <= 1 or "MASTER_ADDR" not in os.environ or not dist.is_available():
            return False
        if dist.is_initialized():
            return False
        if backend is None:
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(hours=timeout_h))
        self.owns_group = True
        return True

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (`[obj]` in one process)."""
        import torch.distributed as dist

        if not self.distributed or not dist.is_initialized():
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, x: float) -> float:
        """The mean of `x` over the ranks (`x` in one process)."""
        values = self.gather(float(x))
        return float(sum(values) / len(values))

    @contextlib.contextmanager
    def leaving(self) -> Iterator[None]:
        """Leave the group when the block ends: after every rank is done when it ends normally
        (`teardown(sync=True)`), at once when it raises."""
        try:
            yield
        except BaseException:
            self.teardown()
            raise
        self.teardown(sync=True)

    def teardown(self, sync: bool = False) -> None:
        """Leave the group this process joined. `sync` (a rank that finished normally): first
        meet every other rank at a barrier, so none closes its connections while another is
        still tearing down (a gloo rank that loses its peer then can abort with SIGABRT). A
        rank leaving on an error does not wait: it exits, and torchrun stops the others."""
        if self.owns_group:
            import torch.distributed as dist

            if sync:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def loader_context() -> str:
    """The start method for DataLoader worker processes: `forkserver` (else `spawn`).

    A plain fork of a process that runs other threads (zarr and tqdm threads, thread pools,
    OpenMP) can inherit a lock some thread held and hang in the worker's first torch op;
    these start from a clean process instead.
    """
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """`auto`/None -> `cuda:LOCAL_RANK` when CUDA is present, else CPU. Errors name the option."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise AbawError(f"unknown device {name!r} ({DEVICES})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AbawError(f"--device {name}: CUDA is not available on this machine")
        if dev.index is None:
            lr = DistEnv.from_env().local_rank if local_rank is None else local_rank
            dev = torch.device("cuda", lr)
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU."""
    if name not in PRECISIONS:
        raise AbawError(f"unknown precision {name!r} ({', '.join(PRECISIONS)})")
    if name != "auto":
        if device.type == "cpu" and name == "fp16":
            raise AbawError("--precision fp16 needs a GPU; use fp32 or bf16 on CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """The autocast context for `precision` (resolved with `resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
