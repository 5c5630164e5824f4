"""`abaw extract`: frozen backbones over videos or aligned frame folders -> the Zarr cache.

    extract(inputs, store, backbones, ExtractConfig(...)) -> ExtractSummary

Inputs are video files, folders of videos, or Aff-Wild2-style `cropped_aligned/`
folders (one sub-folder of frame images per video; `sources`). Videos are decoded
exactly (PyAV), faces detected (MTCNN), one person chosen per video (or two for
`_left`/`_right`) and aligned to the five-point template; frame folders are read as
they are. Every backbone sees the same crops in one pass (`forward`). Each cache video
is written once, when all its frames are through every backbone (`sink`): index first,
then one array per backbone (the done-marker of that backbone). A rerun skips what is
complete, resumes what is not (reusing the stored landmarks, so crops are identical),
and refuses videos whose stored settings or backbone fingerprints differ unless
`overwrite` (`plan`). Specs, settings and inputs are all checked before any model is
built or any store is created.

Sharding: with RANK / WORLD_SIZE set (torchrun), sources are split between ranks by
size (longest first); each rank writes only its own videos into the shared store. With
MASTER_ADDR set too, ranks meet (gloo) to clear stale staging once and merge summaries.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np
import torch

from abaw.cache.store import FeatureStore
from abaw.errors import AbawError
from abaw.extract.backbones import Backbone, validate_spec
from abaw.extract.config import ExtractConfig, ExtractSummary
from abaw.extract.context import RunContext
from abaw.extract.forward import Forwarder
from abaw.extract.frames import FrameDataset, frame_loader, list_frames
from abaw.extract.plan import Job, make_jobs, plan_jobs, shard
from abaw.extract.sink import Sink, VideoState
from abaw.extract.sources import Source, discover, read_only_lists
from abaw.extract.video_run import run_videos
from abaw.runtime import DistEnv

__all__ = ["ExtractConfig", "ExtractSummary", "Source", "discover", "dist_env", "extract", "read_only_lists"]


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    env = DistEnv.from_env()
    return env.rank, env.world, env.local_rank


def run(ctx: RunContext, jobs: list[Job]) -> ExtractSummary:
    """Extract this rank's jobs (planned); the summary of what it did."""
    from tqdm.auto import tqdm

    from abaw import __version__
    from abaw.config import to_dict

    place = {"device": ctx.device.type, "precision": ctx.precision}
    extra_attrs = {"extracted_by": f"abaw {__version__}", "config": to_dict(ctx.cfg), "run": place}
    fps = {k: {**v, "extraction": place} for k, v in ctx.fingerprints.items()}  # informational: not compared
    # a GPU leaves the CPU idle while it computes: write in the background there; on CPU
    # the writer would only compete with the forward for the same cores
    background = ctx.device.type == "cuda" if ctx.background_writes is None else ctx.background_writes
    ctx.sink = Sink(ctx.fs, fps, ctx.timer, ctx.cfg.preview, extra_attrs, background=background)
    ctx.fwd = Forwarder(ctx.backbones, ctx.cfg.batch_size, ctx.device, ctx.precision, ctx.sink, ctx.timer)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    videos = sum(len(j.outputs) for j in jobs)
    skipped = [o.video for j in jobs for o in j.outputs if not o.keys]
    partial = [{"video": o.video, **o.stored_partial} for j in jobs for o in j.outputs  # kept partial before
               if not o.keys and o.stored_partial]
    todo: list[Job] = []
    for job in jobs:
        job.outputs = [o for o in job.outputs if o.keys]
        if job.outputs:
            todo.append(job)
    rank, world = ctx.env.rank, ctx.env.world
    bar = tqdm(total=0, unit="frame", desc=f"extract[{rank}/{world}]" if world > 1 else "extract",
               disable=not ctx.progress, position=rank if world > 1 else None, dynamic_ncols=True,
               smoothing=0.1, delay=0.5)
    ok = False
    try:
        with torch.inference_mode():
            folders = [j for j in todo if j.source.kind == "frames"]
            vids = [j for j in todo if j.source.kind == "video"]
            if folders:
                _run_folders(ctx, folders, bar)
            if vids:
                run_videos(ctx, vids, bar)
            ctx.fwd.flush()
        ok = True
    finally:
        ctx.sink.finish(wait_only=not ok)  # completed videos are always written out
        bar.close()
    w = ctx.sink.written
    return ExtractSummary(
        store=str(ctx.fs.path), videos=videos, done=[r.video for r in w],
        skipped=skipped, failed=[f.to_dict() for f in ctx.sink.failed], frames=sum(r.frames for r in w),
        partial=partial + [{"video": r.video, **r.partial} for r in w if r.partial],
        faces=sum(r.faces for r in w), unreadable=sum(r.unreadable for r in w),
        timings={k: round(v, 3) for k, v in ctx.timer.t.items()}, device=str(ctx.device),
        precision=ctx.precision)


def extract(inputs: Sequence[str | os.PathLike] | str | os.PathLike,
            store: str | os.PathLike | FeatureStore,
            backbones: Sequence[str | Backbone],
            config: ExtractConfig = ExtractConfig(),
            progress: bool = True,
            rank: int | None = None, world: int | None = None,
            background_writes: bool | None = None) -> ExtractSummary:
    """Extract features of `backbones` (specs or built Backbones) for `inputs` into `store`.

    Returns a summary; failed sources are listed in it (the others complete). Raises
    AbawError before creating the store if a spec, a setting or an input is bad, and
    before doing any work if a stored video conflicts (other settings or weights) and
    `config.overwrite` is not set. `background_writes`: write finished videos from a
    background thread (default: on GPU only).
    """
    t_start = time.perf_counter()
    cfg = config
    cfg.validate()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not backbones:
        raise AbawError("extract: give at least one backbone (e.g. --backbone timm:resnet50)")
    for b in backbones:
        if isinstance(b, str):
            validate_spec(b)  # unknown family / options, bad values: before any work
    env = DistEnv.from_env()
    if rank is not None or world is not None:
        env = DistEnv(env.rank if rank is None else rank, env.world if world is None else world, env.local_rank)
    sources = discover(inputs, cfg.kind)
    only = read_only_lists(cfg.only) if cfg.only else None
    grouped = env.init_group(backend="gloo") if env.distributed else False
    with env.leaving():
        ctx = RunContext.create(backbones, cfg, env, progress, background_writes)  # before the store:
        ctx.grouped = grouped  # a model that cannot be built leaves no empty store behind
        jobs = make_jobs(sources, cfg, only, ctx.crop)
        fs = ctx.open_store(store)
        # plan every job on every rank (cheap), so a conflict stops all ranks alike
        plan_jobs(jobs, fs, ctx.backbones, ctx.fingerprints, cfg.overwrite)
        ctx.clear_staging()
        summary = run(ctx, shard(jobs, env.rank, env.world))
        summary.wall_s = time.perf_counter() - t_start
        if ctx.grouped:
            summary = ExtractSummary.merge(env.gather(summary.to_dict()))
        return summary


# ---------------------------------------------------------------------------- frame folders


def _run_folders(ctx: RunContext, jobs: list[Job], bar) -> None:
    sink, fwd, device = ctx.sink, ctx.fwd, ctx.device
    ready: list[Job] = []
    rows: list[np.ndarray | None] = []
    for job in jobs:
        out = job.outputs[0]
        try:
            folder = list_frames(job.source.path, out.video, out.wanted)
        except (AbawError, OSError) as e:
            sink.fail(job, str(e))
            continue
        if not out.new_index:
            if not np.array_equal(folder.frame, out.stored.frame):
                sink.fail(job, f"frame files differ from the cached index of {out.video} (use --overwrite)")
                continue
            r = np.flatnonzero(out.stored.face)
        else:
            if len(folder) == 0:
                sink.fail(job, f"{job.source.path}: no frame images" + (" listed by --only" if out.wanted else ""))
                continue
            r = None
        job.folder = folder
        ready.append(job)
        rows.append(r)
    if not ready:
        return
    states: list[tuple[VideoState, int]] = []
    for job, r in zip(ready, rows):
        out = job.outputs[0]
        st = sink.open(out, job)
        st.n_rows = len(job.folder)
        states.append((st, len(job.folder) if r is None else len(r)))
        if out.new_index:
            st.frame = [job.folder.frame]
            st.timestamp = [np.full(len(job.folder), np.nan)]
            st.face = [np.zeros(len(job.folder), bool)]
    bar.total = sum(n for _, n in states)
    bar.refresh()
    ds = FrameDataset([j.folder for j in ready], rows, ctx.crop)
    # CPU: the forward already uses every core, a reader process would only compete with it
    # (reading 112 px JPEGs costs a few % of a forward); GPU: read in parallel while it computes
    cuda = device.type == "cuda"
    workers = ctx.cfg.workers if ctx.cfg.workers >= 0 else (min(8, os.cpu_count() or 1) if cuda else 0)
    loader = frame_loader(ds, ctx.cfg.batch_size, workers, pin_memory=cuda)
    seen = [0] * len(ready)
    t0 = time.perf_counter()
    for owner, row, imgs, ok in loader:
        ctx.timer.add("images", time.perf_counter() - t0)
        owner_np, row_np, ok_np = owner.numpy(), row.numpy(), ok.numpy().astype(bool)
        imgs_dev = imgs.to(device, non_blocking=True)  # one (pinned, async) copy per batch
        for i in np.unique(owner_np):
            sel = np.flatnonzero(owner_np == i)
            st, total = states[i]
            out = st.out
            good = sel[ok_np[sel]]
            if out.new_index:
                st.face[0][row_np[sel]] = ok_np[sel]
                st.unreadable += int((~ok_np[sel]).sum())
            if st.preview is not None:
                for j in good:
                    if st.preview.wants(int(row_np[j])):
                        st.preview.add(int(row_np[j]), int(ready[i].folder.frame[row_np[j]]), imgs[j].numpy())
            st.expected += len(good)
            if len(good) == len(sel):  # rows of one folder are contiguous in a batch: a view
                fwd.push(imgs_dev[sel[0]:sel[-1] + 1], out.video, row_np[sel])
            elif len(good):
                fwd.push(imgs_dev[torch.from_numpy(good).to(device)], out.video, row_np[good])
            seen[i] += len(sel)
            if seen[i] == total:
                sink.close(out.video)
        bar.update(len(owner_np))
        t0 = time.perf_counter()
