"""The video path of an extraction run: a decode thread feeds chunks of frames; MTCNN
finds the faces, the selection policy picks the person(s), the five landmarks align the
crops, and the forwarder batches them across videos. A resumed video reuses its stored
landmarks, so its crops are the same as in the first run."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from abaw.errors import AbawError
from abaw.extract.config import Timer
from abaw.extract.context import RunContext
from abaw.extract.faces import FaceDetector, FaceSelector, warp_faces
from abaw.extract.plan import Job
from abaw.extract.sink import Sink, VideoState
from abaw.extract.video import DamagedVideoError, VideoError, iter_frames, probe


def _decode_thread(jobs: list[Job], q: queue.Queue, chunk: int, pin: bool, stop: threading.Event,
                   timer: Timer, allow_partial: bool = False) -> None:
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
        except DamagedVideoError as e:  # the good frames before the damage were sent
            if allow_partial and e.decoded > 0:
                put(("end", job, {"decoded": e.decoded, "expected": e.expected,
                                  "reason": str(e).removeprefix(f"{job.source.path}: ")}))
            else:
                put(("error", job, str(e)))
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


def run_videos(ctx: RunContext, jobs: list[Job], bar) -> None:
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
                          args=(jobs, q, cfg.detect_batch, ctx.device.type == "cuda", stop, ctx.timer,
                                cfg.allow_partial))
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
                    _video_end(work, sink, payload)
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


def _video_end(w: _VideoWork, sink: Sink, partial: dict | None = None) -> None:
    """Close the video's outputs; `partial` ({decoded, expected, reason}) when decoding
    stopped at damage and --allow-partial keeps the frames before it."""
    for k, st in enumerate(w.states):
        out = st.out
        if not out.new_index and w.pos[k] != len(out.stored.frame):
            raise AbawError(f"{w.job.source.path}: decodes to fewer frames than the cached index of {out.video}")
        if out.new_index and out.wanted is None and st.n_rows == 0:
            raise AbawError(f"{w.job.source.path}: no frames decoded")
    for st in w.states:
        st.partial = partial
        sink.close(st.out.video)
