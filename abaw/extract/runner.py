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

import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from abaw.cache.store import FeatureStore
from abaw.errors import AbawError
from abaw.extract.backbones import Backbone, create_backbone, validate_spec
from abaw.extract.config import ExtractConfig, ExtractSummary, Timer
from abaw.extract.faces import FaceDetector, FaceSelector, warp_faces
from abaw.extract.forward import Forwarder
from abaw.extract.frames import FrameDataset, frame_loader, list_frames
from abaw.extract.plan import Job, make_jobs, plan_jobs, shard
from abaw.extract.sink import Sink, VideoState
from abaw.extract.sources import Source, discover, read_only_lists
from abaw.extract.video import VideoError, iter_frames, probe
from abaw.runtime import DistEnv, resolve_device, resolve_precision

__all__ = ["ExtractConfig", "ExtractSummary", "Source", "discover", "dist_env", "extract", "read_only_lists"]


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 without it)."""
    env = DistEnv.from_env()
    return env.rank, env.world, env.local_rank


@dataclass
class RunContext:
    """Everything one extraction run shares: its settings, where it runs, the backbones and
    their fingerprints, the store, and (while it runs) the timer, forwarder and sink."""

    cfg: ExtractConfig
    env: DistEnv
    device: torch.device
    precision: str
    backbones: list[Backbone]
    fingerprints: dict[str, dict]  # per cache key, through JSON as stored (tuples become lists)
    crop: int  # side of the aligned crops
    progress: bool = True
    background_writes: bool | None = None  # None: in a background thread on GPU, inline on CPU
    grouped: bool = False  # the ranks meet in a process group
    fs: FeatureStore | None = None
    timer: Timer = field(default_factory=Timer)
    sink: Sink | None = None
    fwd: Forwarder | None = None

    @classmethod
    def create(cls, backbones: Sequence[str | Backbone], cfg: ExtractConfig, env: DistEnv, progress: bool,
               background_writes: bool | None) -> RunContext:
        device = resolve_device(cfg.device, env.local_rank)
        precision = resolve_precision(cfg.precision, device)
        bbs: list[Backbone] = []
        for b in backbones:
            bb = create_backbone(b, device) if isinstance(b, str) else b
            bb.model.to(device)
            if device.type == "cuda":
                bb.model.to(memory_format=torch.channels_last)
            bbs.append(bb)
        keys = [b.key for b in bbs]
        if len(set(keys)) != len(keys):
            raise AbawError(f"two backbones share a cache key ({keys}); give one a key= option")
        fps = {b.key: json.loads(json.dumps(b.fingerprint())) for b in bbs}
        crop = cfg.crop_size or max(b.preprocess.input_size for b in bbs)
        return cls(cfg, env, device, precision, bbs, fps, crop, progress, background_writes)

    def meet(self) -> None:
        """Wait for every rank (when they share a process group)."""
        if self.grouped:
            import datetime

            import torch.distributed as dist

            dist.monitored_barrier(timeout=datetime.timedelta(minutes=30))

    def open_store(self, store: str | os.PathLike | FeatureStore) -> FeatureStore:
        if isinstance(store, FeatureStore):
            self.fs = store
        elif not self.grouped:
            self.fs = FeatureStore(store, "a")
        else:
            fs = FeatureStore(store, "a") if self.env.main else None  # rank 0 creates it, the others wait
            self.meet()
            self.fs = fs or FeatureStore(store, "a")
        return self.fs

    def clear_staging(self) -> None:
        """Stale staging of an interrupted run goes once, before any rank writes."""
        if self.grouped:
            if self.env.main:
                self.fs.clear_staging()
            self.meet()
        elif self.env.world == 1:
            self.fs.clear_staging()

    def run(self, jobs: list[Job]) -> ExtractSummary:
        """Extract this rank's jobs (planned); the summary of what it did."""
        from tqdm.auto import tqdm

        from abaw import __version__
        from abaw.config import to_dict

        run = {"device": self.device.type, "precision": self.precision}
        extra_attrs = {"extracted_by": f"abaw {__version__}", "config": to_dict(self.cfg), "run": run}
        fps = {k: {**v, "extraction": run} for k, v in self.fingerprints.items()}  # informational: not compared
        # a GPU leaves the CPU idle while it computes: write in the background there; on CPU
        # the writer would only compete with the forward for the same cores
        background = self.device.type == "cuda" if self.background_writes is None else self.background_writes
        self.sink = Sink(self.fs, fps, self.timer, self.cfg.preview, extra_attrs, background=background)
        self.fwd = Forwarder(self.backbones, self.cfg.batch_size, self.device, self.precision, self.sink, self.timer)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        videos = sum(len(j.outputs) for j in jobs)
        skipped = [o.video for j in jobs for o in j.outputs if not o.keys]
        todo: list[Job] = []
        for job in jobs:
            job.outputs = [o for o in job.outputs if o.keys]
            if job.outputs:
                todo.append(job)
        rank, world = self.env.rank, self.env.world
        bar = tqdm(total=0, unit="frame", desc=f"extract[{rank}/{world}]" if world > 1 else "extract",
                   disable=not self.progress, position=rank if world > 1 else None, dynamic_ncols=True,
                   smoothing=0.1, delay=0.5)
        ok = False
        try:
            with torch.inference_mode():
                folders = [j for j in todo if j.source.kind == "frames"]
                vids = [j for j in todo if j.source.kind == "video"]
                if folders:
                    _run_folders(self, folders, bar)
                if vids:
                    _run_videos(self, vids, bar)
                self.fwd.flush()
            ok = True
        finally:
            self.sink.finish(wait_only=not ok)  # completed videos are always written out
            bar.close()
        w = self.sink.written
        return ExtractSummary(
            store=str(self.fs.path), videos=videos, done=[r.video for r in w],
            skipped=skipped, failed=[f.to_dict() for f in self.sink.failed], frames=sum(r.frames for r in w),
            faces=sum(r.faces for r in w), unreadable=sum(r.unreadable for r in w),
            timings={k: round(v, 3) for k, v in self.timer.t.items()}, device=str(self.device),
            precision=self.precision)


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
    ctx = RunContext.create(backbones, cfg, env, progress, background_writes)
    jobs = make_jobs(sources, cfg, only, ctx.crop)
    ctx.grouped = env.init_group(backend="gloo") if env.distributed else False
    try:
        fs = ctx.open_store(store)
        # plan every job on every rank (cheap), so a conflict stops all ranks alike
        plan_jobs(jobs, fs, ctx.backbones, ctx.fingerprints, cfg.overwrite)
        ctx.clear_staging()
        summary = ctx.run(shard(jobs, env.rank, env.world))
        summary.wall_s = time.perf_counter() - t_start
        if ctx.grouped:
            summary = ExtractSummary.merge(env.gather(summary.to_dict()))
        return summary
    finally:
        env.teardown()


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


# ---------------------------------------------------------------------------- videos


def _decode_thread(jobs: list[Job], q: queue.Queue, chunk: int, pin: bool, stop: threading.Event,
                   timer: Timer) -> None:
    def alloc(n: int, h: int, w: int):
        return torch.empty((n, h, w, 3), dtype=torch.uint8).pin_memory().numpy()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    for job in jobs:
        if not put(("start", job, None)):
            return
        try:
            it = iter_frames(job.source.path, chunk, alloc=alloc if pin else None)
            while True:
                t0 = time.perf_counter()
                try:
                    ch = next(it)
                except StopIteration:
                    break
                finally:
                    timer.add("decode", time.perf_counter() - t0)
                if not put(("chunk", job, ch)):
                    return
            if not put(("end", job, None)):
                return
        except VideoError as e:
            put(("error", job, str(e)))
        except Exception as e:  # noqa: BLE001 - any failure of one video must not stop the others
            put(("error", job, f"{job.source.path}: {type(e).__name__}: {e}"))
    put(("done", None, None))


@dataclass
class _VideoWork:
    job: Job
    selector: FaceSelector
    states: list[VideoState]
    pos: list[int]  # per output: next position in the stored index (reuse)
    width: int = 0
    n_decoded: int = 0


def _run_videos(ctx: RunContext, jobs: list[Job], bar) -> None:
    cfg, sink = ctx.cfg, ctx.sink
    detector = None
    if any(j.detect for j in jobs):
        detector = FaceDetector(ctx.device, cfg.detect_size, cfg.min_face, cfg.thresholds, impl=cfg.detector)
    total = 0
    for j in jobs:
        try:
            total += probe(j.source.path).estimated_frames()
        except VideoError:
            pass
    bar.total = (bar.total or 0) + total
    bar.refresh()
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    th = threading.Thread(target=_decode_thread, daemon=True, name="abaw-decode",
                          args=(jobs, q, cfg.detect_batch, ctx.device.type == "cuda", stop, ctx.timer))
    th.start()
    work: _VideoWork | None = None
    failed: set[int] = set()
    try:
        while True:
            t0 = time.perf_counter()
            kind, job, payload = q.get()
            ctx.timer.add("decoded frames", time.perf_counter() - t0)
            if kind == "done":
                break
            if id(job) in failed:
                continue
            try:
                if kind == "start":
                    states = [sink.open(o, job) for o in job.outputs]
                    selector = FaceSelector(job.policy, cfg.track_iou, cfg.track_reset, cfg.min_score)
                    work = _VideoWork(job, selector, states, [0] * len(states))
                elif kind == "chunk":
                    assert work is not None and work.job is job
                    _video_chunk(ctx, work, payload, detector)
                    bar.update(len(payload.frame))
                elif kind == "end":
                    assert work is not None and work.job is job
                    _video_end(work, sink)
                    work = None
                elif kind == "error":
                    failed.add(id(job))
                    sink.fail(job, payload)
                    work = None
            except (AbawError, RuntimeError, ValueError) as e:
                failed.add(id(job))
                sink.fail(job, f"{job.source.path}: {type(e).__name__}: {e}")
                work = None
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        th.join()


def _new_rows(st: VideoState, ch, picks, dets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index rows of a chunk for an output detected in this run: (chunk positions, rows, landmarks)."""
    out = st.out
    if out.wanted is None:
        keep = np.ones(len(ch.frame), bool)
    else:
        if out.wanted_arr is None:
            out.wanted_arr = np.fromiter(out.wanted, dtype=np.int64)
        keep = np.isin(ch.frame, out.wanted_arr)
    idx = np.flatnonzero(keep)
    n0 = st.n_rows
    box = np.full((len(idx), 4), np.nan, np.float32)
    lm = np.full((len(idx), 5, 2), np.nan, np.float32)
    score = np.full(len(idx), np.nan, np.float32)
    face = np.zeros(len(idx), bool)
    for r, i in enumerate(idx):
        p = picks[i][out.side]
        if p >= 0:
            d = dets[i]
            face[r] = True
            box[r], lm[r], score[r] = d.boxes[p], d.landmarks[p], d.scores[p]
    st.frame.append(ch.frame[idx])
    st.timestamp.append(ch.timestamp[idx])
    st.face.append(face)
    st.box.append(box)
    st.landmarks.append(lm)
    st.score.append(score)
    st.n_rows += len(idx)
    fr = np.flatnonzero(face)
    return idx[fr], n0 + fr, lm[fr]


def _video_chunk(ctx: RunContext, w: _VideoWork, ch, detector: FaceDetector | None) -> None:
    frames_cpu = torch.from_numpy(ch.rgb) if isinstance(ch.rgb, np.ndarray) else ch.rgb
    w.width = int(frames_cpu.shape[2])
    w.n_decoded += len(ch.frame)
    frames = frames_cpu.to(ctx.device, non_blocking=True)
    picks = None
    dets = None
    if w.job.detect:
        with ctx.timer("detect"):
            dets = detector(frames)
            picks = [w.selector.select(d, w.width) for d in dets]
    for k, st in enumerate(w.states):
        out = st.out
        if out.new_index:
            src_idx, rows, land = _new_rows(st, ch, picks, dets)
        else:  # resume: the stored landmarks give the same crops
            sf = out.stored.frame
            lo = np.searchsorted(sf, ch.frame[0])
            hi = np.searchsorted(sf, ch.frame[-1], side="right")
            rows_all = np.arange(lo, hi)
            rows = rows_all[out.stored.face[rows_all]]
            src_idx = np.searchsorted(ch.frame, sf[rows])
            land = out.stored_landmarks[rows]
            w.pos[k] = hi
        if len(rows) == 0:
            continue
        with ctx.timer("align"):
            crops = warp_faces(frames, src_idx, land.astype(np.float32), ctx.crop)
        if st.preview is not None:
            cc = None
            for j, r in enumerate(rows):
                if st.preview.wants(int(r)):
                    cc = crops.cpu().numpy() if cc is None else cc
                    st.preview.add(int(r), int(ch.frame[src_idx[j]]), cc[j])
        st.expected += len(rows)
        ctx.fwd.push(crops, out.video, rows)


def _video_end(w: _VideoWork, sink: Sink) -> None:
    for k, st in enumerate(w.states):
        out = st.out
        if not out.new_index and w.pos[k] != len(out.stored.frame):
            raise AbawError(f"{w.job.source.path}: decodes to fewer frames than the cached index of {out.video}")
        if out.new_index and out.wanted is None and st.n_rows == 0:
            raise AbawError(f"{w.job.source.path}: no frames decoded")
    for st in w.states:
        sink.close(st.out.video)
