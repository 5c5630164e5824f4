"""`abaw synth OUT`: a small synthetic s-Aff-Wild2 in the exact challenge layout.

Layout written under OUT:

    cropped_aligned/<video>/<00001>.jpg   112x112 aligned faces of the labelled frames (every
                                          face frame with `all_crops`; no face: absent)
    videos/<clip>.mp4                     the same clips as video files (30 fps, H.264), every
                                          frame; `<clip>_left` / `<clip>_right` share one file
    training_set_annotations.txt          ABAW annotation format (invalid codes, duplicates)
    validation_set_annotations.txt
    MTL.txt                               ABAW7-style test list (trailing commas, repeats)
    test_set_annotations.txt              the hidden test labels, for scoring
    synth.json                            the config and a summary

Labels are temporally smooth latent processes in video time (expression runs, AU on/off
runs that depend on the expression, VA drifting towards expression-dependent targets);
a profile (`abaw.data.synth_profiles`) sets their statistics and which frames carry labels:
`s-aff-wild2` (default) the real sparse labelling, `dense` every face frame. Each frame
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
from abaw.data.annotations import Annotations, read_annotations, write_annotations
from abaw.data.face_render import Identity, render_face
from abaw.data.label_stats import format_stats, label_stats
from abaw.data.labels import EXPR_INVALID, N_AU, N_EXPR, VA_INVALID, image_name
from abaw.data.synth_profiles import (
    REAL_STATS,
    Profile,
    get_profile,
    labelled_frames,
    latent_track,
    track_sizes,
)
from abaw.errors import AbawError
from abaw.io import atomic_write, write_json

__all__ = ["SynthConfig", "format_summary", "generate", "label_stats", "latent_track", "load_summary"]

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
    # labelled frames per track; dense: clip length, uniform; s-aff-wild2: log-normal with
    # the real shape between them. None: the profile's default.
    min_frames: int | None = None
    max_frames: int | None = None
    fps: int = 30
    videos: bool = True  # also write the clips as mp4 files
    video_width: int = 320
    video_height: int = 240
    cue_noise: float = 0.35  # per-frame noise on the rendered label cues
    pixel_noise: float = 4.0
    missing_rate: float = 0.04  # dense: share of frames where the face is lost (sparse: inside long gaps)
    duplicate_rate: float = 0.01  # duplicated annotation lines (train)
    test_repeat_rate: float = 0.015  # repeated test-list entries
    profile: str = "s-aff-wild2"  # label statistics (abaw.data.synth_profiles.PROFILES)
    all_crops: bool = False  # crops of every face frame, not only the labelled ones

    def frame_range(self) -> tuple[int, int]:
        """(min_frames, max_frames), the profile's defaults where unset."""
        lo, hi = get_profile(self.profile).frames
        return (lo if self.min_frames is None else self.min_frames,
                hi if self.max_frames is None else self.max_frames)


@dataclass
class _Track:
    video: str  # id with _left/_right suffix when two people share the clip
    split: str
    present: np.ndarray  # bool [T] face visible
    labelled: np.ndarray  # bool [T] frame in the annotation file (a subset of present)
    va: np.ndarray  # float32 [T, 2]
    expr: np.ndarray  # int64 [T]
    au: np.ndarray  # int8 [T, 12]
    va_ok: np.ndarray  # bool [T] label validity per task
    expr_ok: np.ndarray
    au_ok: np.ndarray


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
    used = {cid for quirks in QUIRK_CLIPS.values() for cid, _ in quirks}  # never drawn at random for another split
    clips: list[tuple[str, str, int]] = []
    for split, n in (("train", cfg.train_videos), ("val", cfg.val_videos), ("test", cfg.test_videos)):
        left = n
        for cid, people in QUIRK_CLIPS[split]:
            if people <= left:
                clips.append((cid, split, people))
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


def _clip_labels(cfg: SynthConfig, cid: str, split: str, people: int, index: int, first: bool,
                 sizes: list[int] | None) -> tuple[np.random.Generator, list[_Track], list[Identity]]:
    """The tracks of one clip (labels, presence) and their identities; the clip's generator.

    `sizes`: labelled frames of each track (sparse profiles). The first clip of each split
    is fully labelled, so every task has valid frames.
    """
    prof = get_profile(cfg.profile)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, index]))
    if prof.sparse:
        layout = [labelled_frames(rng, n, prof) for n in sizes or [1] * people]
        T = max(int(pos[-1]) for pos, _ in layout) + 1 + int(rng.integers(0, 30))
    else:
        lo, hi = cfg.frame_range()
        T = int(rng.integers(lo, hi + 1))
    idents: list[Identity] = []
    background = None
    tracks: list[_Track] = []
    for p, vid in enumerate(_track_ids(cid, people)):
        ident = Identity.sample(rng, background)
        background = ident.background
        idents.append(ident)
        va, expr, au = latent_track(rng, T, prof)
        if prof.sparse:
            present, labelled, oks = _sparse_track(rng, T, split, first, prof, *layout[p])
        else:
            present, oks = _dense_track(rng, T, split, first, cfg.missing_rate)
            labelled = present
        tracks.append(_Track(vid, split, present, labelled, va, expr, au, *oks))
    return rng, tracks, idents


def _gen_clip(cfg: SynthConfig, out: Path, cid: str, split: str, people: int, index: int,
              first: bool, sizes: list[int] | None = None) -> list[_Track]:
    """Generate, render and write one clip; return its tracks' labels."""
    sparse = get_profile(cfg.profile).sparse
    rng, tracks, idents = _clip_labels(cfg, cid, split, people, index, first, sizes)
    background = idents[-1].background
    T = len(tracks[0].present)
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
                crop = bool(tr.labelled[t]) or cfg.all_crops
                if frame is None and not crop:
                    continue
                # sparse: noise of its own per frame, so crops do not depend on what else is drawn
                frng = np.random.default_rng([cfg.seed, index, p, t]) if sparse else rng
                img = _render(cfg, ident, tr, t, frng, fast=sparse)
                if crop:
                    img.save(crops_dir / tr.video / f"{t + 1:05d}.jpg", quality=95)
                if frame is not None:
                    _paste_face(frame, img, p, people, t, phase[p], period[p], W, H)
            if writer:
                writer.write(np.asarray(frame))
    finally:
        if writer:
            writer.close()
    return tracks


def _dense_track(rng: np.random.Generator, T: int, split: str, first: bool, missing_rate: float):
    """Face-lost stretches and per-task validity of a dense track (the original recipe)."""
    present = np.ones(T, bool)
    n_gaps = rng.poisson(missing_rate * T / 15)
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
    return present, (va_ok, expr_ok, au_ok)


def _sparse_track(rng: np.random.Generator, T: int, split: str, first: bool, prof: Profile,
                  pos: np.ndarray, lost: np.ndarray):
    """Face presence, labelled frames and per-task validity of a sparsely labelled track."""
    present = np.ones(T, bool)
    for a, b in lost:
        present[a:b] = False
    labelled = np.zeros(T, bool)
    labelled[pos] = True
    expr_ok = prof.expr_valid.mask(rng, T)
    if split == "train":  # VA and AU valid on nearly all rows
        va_ok, au_ok = prof.train_valid.mask(rng, T), prof.train_valid.mask(rng, T)
    else:
        va_ok, au_ok = np.ones(T, bool), np.ones(T, bool)
    if first:
        va_ok[:] = expr_ok[:] = au_ok[:] = True
    return present, labelled, (va_ok, expr_ok, au_ok)


def _render(cfg: SynthConfig, ident: Identity, tr: _Track, t: int, rng: np.random.Generator, fast: bool):
    au_cue = tr.au[t] * rng.uniform(0.75, 1.0, N_AU) + rng.normal(0, cfg.cue_noise, N_AU)
    v_cue, a_cue = tr.va[t] + rng.normal(0, cfg.cue_noise * 0.6, 2)
    shown = int(tr.expr[t]) if rng.random() > cfg.cue_noise * 0.5 else int(rng.integers(N_EXPR))
    return render_face(ident, au_cue, v_cue, a_cue, shown, float(rng.uniform(0.6, 1.0)), rng,
                       pixel_noise=cfg.pixel_noise, fast=fast)


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


def _label_rows(tracks: list[_Track]) -> tuple[list[str], list, list, list]:
    """Image names and labels (invalid codes where not valid) of the labelled frames, by video."""
    images, va, expr, au = [], [], [], []
    for tr in sorted(tracks, key=lambda x: x.video):
        for t in np.flatnonzero(tr.labelled):
            images.append(image_name(tr.video, int(t) + 1))
            va.append(tr.va[t] if tr.va_ok[t] else (VA_INVALID, VA_INVALID))
            expr.append(tr.expr[t] if tr.expr_ok[t] else EXPR_INVALID)
            au.append(tr.au[t] if tr.au_ok[t] else np.full(N_AU, -1, np.int8))
    return images, va, expr, au


def synth_labels(cfg: SynthConfig) -> dict[str, Annotations]:
    """The labels `generate(out, cfg)` writes (duplicates aside), per split, without rendering
    anything: fast enough to check the statistics of large configurations."""
    prof = get_profile(cfg.profile)
    lo, hi = cfg.frame_range()
    clips = _make_clips(cfg, np.random.default_rng(np.random.SeedSequence([cfg.seed, 10_000])))
    firsts = {s: next(i for i, c in enumerate(clips) if c[1] == s) for s in ("train", "val", "test")}
    sizes = _clip_sizes(cfg, clips, prof, lo, hi)
    tracks = [tr for i, (cid, split, people) in enumerate(clips)
              for tr in _clip_labels(cfg, cid, split, people, i, firsts[split] == i, sizes[i])[1]]
    out = {}
    for split in ("train", "val", "test"):
        part = sorted((t for t in tracks if t.split == split), key=lambda x: x.video)
        _, va, expr, au = _label_rows(part)
        n = [int(t.labelled.sum()) for t in part]
        out[split] = Annotations(
            videos=tuple(t.video for t in part),
            video_idx=np.repeat(np.arange(len(part), dtype=np.int32), n),
            frame=np.concatenate([np.flatnonzero(t.labelled) + 1 for t in part]).astype(np.int32),
            va=np.array(va, np.float32).reshape(-1, 2), expr=np.array(expr, np.int64),
            au=np.array(au, np.int8).reshape(-1, N_AU))
    return out


def _write_labels(path: Path, tracks: list[_Track], rng: np.random.Generator | None,
                  duplicate_rate: float) -> int:
    """Write the annotation file of some tracks; return the number of rows."""
    images, va, expr, au = _label_rows(tracks)
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
    prof = get_profile(cfg.profile)
    lo, hi = cfg.frame_range()
    if lo < 1 or hi < lo:
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
        sizes = _clip_sizes(cfg, clips, prof, lo, hi)
        work = [delayed(_gen_clip)(cfg, stage, cid, split, people, i, firsts[split] == i, sizes[i])
                for i, (cid, split, people) in enumerate(clips)]
        it = Parallel(n_jobs=jobs, return_as="generator")(work) if jobs != 1 else (w[0](*w[1], **w[2]) for w in work)
        tracks: list[_Track] = []
        for res in tqdm(it, total=len(work), desc="synth clips", unit="clip", disable=not progress):
            tracks.extend(res)
        by_split = {s: [t for t in tracks if t.split == s] for s in ("train", "val", "test")}
        # sparse profiles: duplicated lines drawn by a generator of their own, so the training file
        # does not depend on the other splits' sizes (`--test-videos N` keeps it byte for byte and
        # a search trained on it resumes); dense keeps the original generator's bytes
        dup_rng = rng if not prof.sparse else np.random.default_rng(np.random.SeedSequence([cfg.seed, 30_000]))
        n_train = _write_labels(stage / "training_set_annotations.txt", by_split["train"], dup_rng,
                                cfg.duplicate_rate)
        n_val = _write_labels(stage / "validation_set_annotations.txt", by_split["val"], None, 0.0)
        n_test = _write_labels(stage / "test_set_annotations.txt", by_split["test"], None, 0.0)
        # ABAW7-style test list: trailing commas, some entries repeated in place
        names = [image_name(tr.video, int(t) + 1) for tr in sorted(by_split["test"], key=lambda x: x.video)
                 for t in np.flatnonzero(tr.labelled)]
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
            "video_frames": int(sum(len(t.present) for t in tracks)),
            "crops": int(sum(int((t.labelled | (t.present & cfg.all_crops)).sum()) for t in tracks)),
            "stats": _split_stats(stage),
        }
        write_json(stage / "synth.json", summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return summary


def _clip_sizes(cfg: SynthConfig, clips: list[tuple[str, str, int]], prof: Profile, lo: int, hi: int
                ) -> list[list[int] | None]:
    """Labelled frames of every track of every clip (sparse profiles; None for dense), drawn
    per split so that each split has the profile's spread of lengths."""
    if not prof.sparse:
        return [None] * len(clips)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 20_000]))
    out: list[list[int] | None] = [None] * len(clips)
    for split in ("train", "val", "test"):
        idx = [i for i, c in enumerate(clips) if c[1] == split]
        sizes = iter(track_sizes(rng, sum(clips[i][2] for i in idx), lo, hi, prof))
        for i in idx:
            out[i] = [next(sizes) for _ in range(clips[i][2])]
    return out


def _split_stats(root: Path) -> dict:
    """`label_stats` of each annotation file and of all of them together."""
    parts = {s: read_annotations(root / f"{f}_set_annotations.txt")
             for s, f in (("train", "training"), ("val", "validation"), ("test", "test"))}
    stats = {s: label_stats(a) for s, a in parts.items()}
    stats["all"] = label_stats(Annotations.concat(list(parts.values())))
    return stats


def format_summary(summary: dict) -> str:
    """What `abaw synth` prints: sizes, then the label statistics (real values in brackets)."""
    r = summary["rows"]
    cfg = summary["config"]
    head = (f"{len(summary['clips'])} clips, profile {cfg['profile']}: labelled frames train {r['train']}, "
            f"val {r['val']}, test {r['test']} (test list {r['test_list']} entries); "
            f"{summary['video_frames']} video frames, {summary['crops']} crops")
    real = REAL_STATS if get_profile(cfg["profile"]).sparse else None
    body = format_stats(summary["stats"]["all"], real)
    return head + "\nall splits" + (" (real s-Aff-Wild2 validation in brackets)" if real else "") + ":\n  " + \
        body.replace("\n", "\n  ")


def load_summary(root: str | os.PathLike) -> dict:
    """Read `synth.json` of a generated dataset."""
    with open(Path(root) / "synth.json", encoding="utf-8") as f:
        return json.load(f)
