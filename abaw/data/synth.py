"""`abaw synth OUT`: a small synthetic s-Aff-Wild2 in the exact challenge layout.

Layout written under OUT:

    cropped_aligned/<video>/<00001>.jpg   112x112 aligned faces (frames with no face absent)
    videos/<clip>.mp4                     the same clips as video files (30 fps, H.264);
                                          `<clip>_left` / `<clip>_right` share one file
    training_set_annotations.txt          ABAW annotation format (invalid codes, duplicates)
    validation_set_annotations.txt
    MTL.txt                               ABAW7-style test list (trailing commas, repeats)
    test_set_annotations.txt              the hidden test labels, for scoring
    synth.json                            the config and a summary

Labels are temporally smooth latent processes (expression runs, AU on/off runs that
depend on the expression, VA drifting towards expression-dependent targets). Each frame
renders a *noisy* view of that state (cue noise), so single frames are ambiguous and
temporal models have something to gain. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abaw.config import to_dict
from abaw.data.annotations import write_annotations
from abaw.data.face_render import Identity, render_face
from abaw.data.labels import EXPR_INVALID, N_AU, N_EXPR, VA_INVALID, image_name
from abaw.errors import AbawError
from abaw.io import atomic_write, write_json

# Expression frequencies (roughly those of the real validation set).
P_EXPR = np.array([0.14, 0.05, 0.05, 0.08, 0.22, 0.12, 0.09, 0.25])
# P(AU active | expression); AU order AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26.
AU_GIVEN_EXPR = np.array([
    [.05, .05, .05, .05, .05, .05, .08, .05, .05, .05, .12, .05],  # Neutral
    [.05, .05, .85, .10, .75, .35, .05, .15, .65, .55, .15, .05],  # Anger
    [.05, .05, .55, .15, .35, .85, .05, .45, .10, .10, .35, .10],  # Disgust
    [.80, .65, .60, .05, .35, .10, .05, .20, .10, .05, .70, .35],  # Fear
    [.05, .05, .03, .85, .25, .35, .92, .03, .03, .03, .60, .25],  # Happiness
    [.70, .10, .60, .05, .15, .05, .03, .75, .10, .25, .10, .05],  # Sadness
    [.85, .80, .05, .05, .05, .05, .10, .05, .05, .05, .85, .70],  # Surprise
    [.20, .20, .20, .20, .20, .20, .20, .20, .20, .20, .25, .15],  # Other
])
# (valence, arousal) each expression pulls towards; Other draws its own per segment.
VA_TARGET = np.array([
    [0.0, -0.25], [-0.6, 0.6], [-0.5, 0.25], [-0.45, 0.6], [0.7, 0.4], [-0.6, -0.35], [0.3, 0.75], [0.0, 0.0],
])

# Ids with the quirks of the real data, assigned first: exact-match traps (`140` vs
# `140-30-632x360`), `videoN_K`, and two-person clips (`_left` / `_right`).
QUIRK_CLIPS = {
    "train": [("10-60-1280x720", 2), ("140", 1), ("140-30-632x360", 1), ("video45_1", 1), ("1-30-1280x720", 1)],
    "val": [("6-30-1920x1080", 2), ("video10_1", 1), ("341", 1)],
    "test": [("video59_2", 1), ("82-25-854x480", 2), ("45", 1)],
}
RESOLUTIONS = ["640x360", "1280x720", "1920x1080", "854x480", "480x360"]


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of a synthetic dataset (saved in synth.json)."""

    seed: int = 0
    train_videos: int = 24  # person tracks (a `_left`/`_right` pair counts two)
    val_videos: int = 8
    test_videos: int = 6
    min_frames: int = 100
    max_frames: int = 200
    fps: int = 30
    videos: bool = True  # also write the clips as mp4 files
    video_width: int = 320
    video_height: int = 240
    cue_noise: float = 0.35  # per-frame noise on the rendered label cues
    pixel_noise: float = 4.0
    missing_rate: float = 0.04  # share of frames where the face is lost
    duplicate_rate: float = 0.01  # duplicated annotation lines (train)
    test_repeat_rate: float = 0.015  # repeated test-list entries


@dataclass
class _Track:
    video: str  # id with _left/_right suffix when two people share the clip
    split: str
    present: np.ndarray  # bool [T]
    va: np.ndarray  # float32 [T, 2]
    expr: np.ndarray  # int64 [T]
    au: np.ndarray  # int8 [T, 12]
    va_ok: np.ndarray  # bool [T] label validity per task
    expr_ok: np.ndarray
    au_ok: np.ndarray


def _runs(rng: np.random.Generator, T: int, mean: float, minimum: int) -> list[tuple[int, int]]:
    out, t = [], 0
    while t < T:
        L = minimum + int(rng.geometric(1.0 / mean))
        out.append((t, min(T, t + L)))
        t += L
    return out


def latent_track(rng: np.random.Generator, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth ground truth for one person: VA [T,2], EXPR [T], AU [T,12]."""
    expr = np.empty(T, dtype=np.int64)
    target = np.empty((T, 2), dtype=np.float64)
    for s, e in _runs(rng, T, mean=35, minimum=15):
        c = int(rng.choice(N_EXPR, p=P_EXPR))
        expr[s:e] = c
        target[s:e] = VA_TARGET[c] if c != 7 else rng.uniform(-0.35, 0.35, size=2)
    change = set(np.flatnonzero(np.diff(expr)) + 1)
    au = np.zeros((T, N_AU), dtype=np.int8)
    for k in range(N_AU):
        t = 0
        while t < T:
            L = 6 + int(rng.geometric(1.0 / 22))
            end = min(T, t + L)
            cut = [c for c in change if t < c < end]
            if cut:
                end = min(cut)
            au[t:end, k] = rng.random() < AU_GIVEN_EXPR[expr[t], k]
            t = end
    # VA: exponential approach to the expression target + slow drift + a personal offset
    va = np.empty((T, 2))
    state = target[0].copy()
    for t in range(T):
        state += 0.08 * (target[t] - state)
        va[t] = state
    tt = np.arange(T)
    for j in range(2):
        for _ in range(3):
            period = rng.uniform(60, 300)
            va[:, j] += 0.12 * np.sin(2 * np.pi * tt / period + rng.uniform(0, 2 * np.pi))
        va[:, j] += rng.normal(0, 0.08)
    return np.clip(va, -0.98, 0.98).astype(np.float32), expr, au


def _segment_mask(rng: np.random.Generator, T: int, p_whole: float, p_segment: float) -> np.ndarray:
    ok = np.ones(T, bool)
    if rng.random() < p_whole:
        ok[:] = False
    elif rng.random() < p_segment:
        L = int(rng.integers(min(20, T), min(60, T) + 1))
        s = int(rng.integers(0, T - L + 1))
        ok[s:s + L] = False
    return ok


def _make_clips(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(clip id, split, number of people) for every clip."""
    used: set[str] = set()
    clips: list[tuple[str, str, int]] = []
    for split, n in (("train", cfg.train_videos), ("val", cfg.val_videos), ("test", cfg.test_videos)):
        left = n
        for cid, people in QUIRK_CLIPS[split]:
            if people <= left:
                clips.append((cid, split, people))
                used.add(cid)
                left -= people
        while left > 0:
            style = rng.integers(3)
            if style == 0:
                cid = f"{rng.integers(2, 480)}-{rng.choice([24, 25, 30, 60])}-{rng.choice(RESOLUTIONS)}"
            elif style == 1:
                cid = f"{rng.integers(1, 480)}"
            else:
                cid = f"video{rng.integers(1, 99)}_{rng.integers(1, 4)}"
            if cid in used:
                continue
            used.add(cid)
            clips.append((cid, split, 1))
            left -= 1
    return clips


def _track_ids(cid: str, people: int) -> list[str]:
    return [cid] if people == 1 else [f"{cid}_left", f"{cid}_right"]


def _gen_clip(cfg: SynthConfig, out: Path, cid: str, split: str, people: int, index: int,
              first: bool) -> list[_Track]:
    """Generate, render and write one clip; return its tracks' labels.

    The first clip of each split is fully labelled, so every task has valid frames.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))
    T = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
    idents: list[Identity] = []
    background = None
    tracks: list[_Track] = []
    for vid in _track_ids(cid, people):
        ident = Identity.sample(rng, background)
        background = ident.background
        idents.append(ident)
        va, expr, au = latent_track(rng, T)
        present = np.ones(T, bool)
        n_gaps = rng.poisson(cfg.missing_rate * T / 15)
        for _ in range(n_gaps):
            L = int(rng.integers(5, 26))
            s = int(rng.integers(0, max(1, T - L)))
            present[s:s + L] = False
        if not present.any():
            present[0] = True
        if split == "train":
            va_ok = _segment_mask(rng, T, 0.10, 0.2)
            expr_ok = _segment_mask(rng, T, 0.25, 0.3)
            au_ok = _segment_mask(rng, T, 0.15, 0.2)
            if first:
                va_ok[:] = expr_ok[:] = au_ok[:] = True
        else:  # like the real validation set: VA and AU complete, EXPR partial
            va_ok = np.ones(T, bool)
            au_ok = np.ones(T, bool)
            expr_ok = _segment_mask(rng, T, 0.35, 0.5)
            if first:
                expr_ok[:] = True
        tracks.append(_Track(vid, split, present, va, expr, au, va_ok, expr_ok, au_ok))

    # render per frame: a noisy view of the latent state
    W, H = cfg.video_width, cfg.video_height
    crops_dir = out / "cropped_aligned"
    for tr in tracks:
        (crops_dir / tr.video).mkdir(parents=True, exist_ok=True)
    writer = _VideoWriter(out / "videos" / f"{cid}.mp4", W, H, cfg.fps) if cfg.videos else None
    # slow drift of each face's position and size in the video frame
    phase = rng.uniform(0, 2 * np.pi, size=(people, 3))
    period = rng.uniform(90, 240, size=(people, 3))
    try:
        for t in range(T):
            frame = _background(W, H, background) if writer else None
            for p, (tr, ident) in enumerate(zip(tracks, idents)):
                if not tr.present[t]:
                    continue
                au_cue = tr.au[t] * rng.uniform(0.75, 1.0, N_AU) + rng.normal(0, cfg.cue_noise, N_AU)
                v_cue, a_cue = tr.va[t] + rng.normal(0, cfg.cue_noise * 0.6, 2)
                shown = int(tr.expr[t]) if rng.random() > cfg.cue_noise * 0.5 else int(rng.integers(N_EXPR))
                img = render_face(ident, au_cue, v_cue, a_cue, shown, float(rng.uniform(0.6, 1.0)), rng,
                                  pixel_noise=cfg.pixel_noise)
                img.save(crops_dir / tr.video / f"{t + 1:05d}.jpg", quality=95)
                if frame is not None:
                    _paste_face(frame, img, p, people, t, phase[p], period[p], W, H)
            if writer:
                writer.write(np.asarray(frame))
    finally:
        if writer:
            writer.close()
    return tracks


def _background(W: int, H: int, colour: tuple[int, int, int]):
    from PIL import Image

    img = Image.new("RGB", (W, H), colour)
    return img


def _paste_face(frame, img, p: int, people: int, t: int, phase, period, W: int, H: int) -> None:
    from PIL import Image

    size = int(round(118 + 10 * np.sin(2 * np.pi * t / period[2] + phase[2])))
    cx = W * ((p + 0.5) / people) + 18 * np.sin(2 * np.pi * t / period[0] + phase[0]) / people
    cy = H * 0.5 + 14 * np.sin(2 * np.pi * t / period[1] + phase[1])
    face = img.resize((size, size), Image.BILINEAR)
    frame.paste(face, (int(round(cx - size / 2)), int(round(cy - size / 2))))


class _VideoWriter:
    """H.264 mp4 writer (PyAV) that only appears under its final name when complete."""

    def __init__(self, path: Path, width: int, height: int, fps: int):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(f".{path.name}.partial")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "18", "preset": "veryfast"}
        self.stream.thread_count = 1

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)


def _write_labels(path: Path, tracks: list[_Track], rng: np.random.Generator | None,
                  duplicate_rate: float) -> int:
    """Write the annotation file of some tracks; return the number of rows."""
    images, va, expr, au = [], [], [], []
    for tr in sorted(tracks, key=lambda x: x.video):
        for t in np.flatnonzero(tr.present):
            images.append(image_name(tr.video, int(t) + 1))
            va.append(tr.va[t] if tr.va_ok[t] else (VA_INVALID, VA_INVALID))
            expr.append(tr.expr[t] if tr.expr_ok[t] else EXPR_INVALID)
            au.append(tr.au[t] if tr.au_ok[t] else np.full(N_AU, -1, np.int8))
    order = list(range(len(images)))
    if rng is not None and duplicate_rate > 0 and images:
        n_dup = max(1, int(round(duplicate_rate * len(images))))
        for i in sorted(rng.choice(len(images), size=n_dup, replace=False), reverse=True):
            order.insert(int(i) + 1, int(i))
    write_annotations(path, [images[i] for i in order], np.array([va[i] for i in order]),
                      np.array([expr[i] for i in order]), np.array([au[i] for i in order]))
    return len(images)


def generate(out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), jobs: int = 1,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Write a synthetic dataset under `out` (built in a staging folder, then renamed)."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    out = Path(out)
    if cfg.min_frames < 1 or cfg.max_frames < cfg.min_frames:
        raise AbawError("synth: need 1 <= min_frames <= max_frames")
    if min(cfg.train_videos, cfg.val_videos, cfg.test_videos) < 1:
        raise AbawError("synth: every split needs at least one video")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise AbawError(f"{out}: exists and is not empty (use --overwrite)")
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 10_000]))
    clips = _make_clips(cfg, rng)
    stage = out.with_name(f".{out.name}.partial")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        firsts = {s: next(i for i, c in enumerate(clips) if c[1] == s) for s in ("train", "val", "test")}
        work = [delayed(_gen_clip)(cfg, stage, cid, split, people, i, firsts[split] == i)
                for i, (cid, split, people) in enumerate(clips)]
        it = Parallel(n_jobs=jobs, return_as="generator")(work) if jobs != 1 else (w[0](*w[1], **w[2]) for w in work)
        tracks: list[_Track] = []
        for res in tqdm(it, total=len(work), desc="synth clips", unit="clip", disable=not progress):
            tracks.extend(res)
        by_split = {s: [t for t in tracks if t.split == s] for s in ("train", "val", "test")}
        n_train = _write_labels(stage / "training_set_annotations.txt", by_split["train"], rng, cfg.duplicate_rate)
        n_val = _write_labels(stage / "validation_set_annotations.txt", by_split["val"], None, 0.0)
        n_test = _write_labels(stage / "test_set_annotations.txt", by_split["test"], None, 0.0)
        # ABAW7-style test list: trailing commas, some entries repeated in place
        names = [image_name(tr.video, int(t) + 1) for tr in sorted(by_split["test"], key=lambda x: x.video)
                 for t in np.flatnonzero(tr.present)]
        entries: list[str] = []
        for name in names:
            entries.append(name)
            if rng.random() < cfg.test_repeat_rate:
                entries.append(name)
        with atomic_write(stage / "MTL.txt", "w", encoding="utf-8", newline="\n") as f:
            f.write("image,valence,arousal,expression,aus\n")
            f.writelines(f"{n},\n" for n in entries)
        summary = {
            "config": to_dict(cfg),
            "splits": {s: sorted(t.video for t in ts) for s, ts in by_split.items()},
            "clips": [{"clip": c, "split": s, "people": p} for c, s, p in clips],
            "rows": {"train": n_train, "val": n_val, "test": n_test, "test_list": len(entries)},
        }
        write_json(stage / "synth.json", summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return summary


def load_summary(root: str | os.PathLike) -> dict:
    """Read `synth.json` of a generated dataset."""
    with open(Path(root) / "synth.json", encoding="utf-8") as f:
        return json.load(f)
