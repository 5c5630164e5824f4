"""`abaw extract` on video files: synthetic clips (detect -> align recovers the crops,
_left/_right people), real videos (exact frame counts, faces where there are faces),
corrupt files, and resume after a real `kill -9`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from abaw.cache.store import FeatureStore
from abaw.cli import main
from abaw.data.synth import load_summary
from abaw.extract.faces import warp_faces
from abaw.extract.runner import ExtractConfig, extract
from abaw.extract.video import count_frames, iter_frames
from tests.conftest import REAL_FACES
from tests.test_extract_frames import TINY, _assert_same_cache

ROOT = Path(__file__).resolve().parents[1]
ONLY = ("training_set_annotations.txt", "validation_set_annotations.txt", "MTL.txt")


CLIPS = ("10-60-1280x720.mp4", "140.mp4")  # a two-person clip and a one-person clip


@pytest.fixture(scope="module")
def clips(tiny_synth_videos, tmp_path_factory) -> Path:
    """Two of the synth clips (keeps the MTCNN work of these tests small)."""
    d = tmp_path_factory.mktemp("clips")
    for c in CLIPS:
        os.symlink(tiny_synth_videos / "videos" / c, d / c)
    return d


def _cli_args(data: Path, store: Path, clips: Path) -> list[str]:
    args = ["extract", str(clips), "-o", str(store), "-b", TINY, "-q", "--all-frames",
            "--batch-size", "16", "--detect-batch", "8", "--min-face", "40"]
    for f in ONLY:
        args += ["--only", str(data / f)]
    return args


def _config(data: Path) -> ExtractConfig:
    # synth faces are ~120 px: a 40 px minimum face keeps the MTCNN pyramid (and the test) small
    return ExtractConfig(only=tuple(str(data / f) for f in ONLY), all_frames=True, batch_size=16, detect_batch=8,
                         min_face=40)


@pytest.fixture(scope="module")
def video_store(tiny_synth_videos, clips, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("videos") / "cache.zarr"
    s = extract([clips], store, [TINY], _config(tiny_synth_videos), progress=False)
    assert s.ok, s.failed
    return store


def test_synth_videos_recover_the_aligned_crops(video_store, tiny_synth_videos):
    data = tiny_synth_videos
    fs = FeatureStore(video_store)
    summary = load_summary(data)
    stems = [c.removesuffix(".mp4") for c in CLIPS]
    tracks = sorted(v for vs in summary["splits"].values() for v in vs
                    if v.removesuffix("_left").removesuffix("_right") in stems)
    assert fs.videos() == tracks == ["10-60-1280x720_left", "10-60-1280x720_right", "140"]  # one file, 2 people
    agree = []
    key = fs.feature_keys(tracks[0])[0]
    for v in tracks:
        clip = v.removesuffix("_left").removesuffix("_right")
        idx = fs.read_index(v)
        n = count_frames(data / "videos" / f"{clip}.mp4")
        assert idx.frame.tolist() == list(range(1, n + 1))  # every decoded frame, 1-based
        present = np.array([(data / "cropped_aligned" / v / f"{f:05d}.jpg").exists() for f in idx.frame])
        agree.append((present == idx.face).mean())
        feats = fs.read_features(v, key)
        assert (feats[~idx.face] == 0).all() and (np.abs(feats[idx.face]).sum(1) > 0).all()
        assert idx.attrs["person"] == ("left" if v.endswith("_left") else "right" if v.endswith("_right")
                                       else "main")
    assert np.mean(agree) > 0.9, agree  # faces found where the synth drew them, and only there
    # the aligned crops cut from the video match the synth's cropped_aligned images
    v = tracks[0]
    clip = v.removesuffix("_left").removesuffix("_right")
    idx = fs.read_index(v)
    lm = fs.read_array(v, "landmarks")
    ch = next(iter_frames(data / "videos" / f"{clip}.mp4", chunk=24))
    rows = [i for i in range(len(ch.frame)) if idx.face[i]
            and (data / "cropped_aligned" / v / f"{ch.frame[i]:05d}.jpg").exists()][:8]
    crops = warp_faces(torch.from_numpy(ch.rgb), np.array(rows), lm[rows], 112).numpy().astype(float)
    ref = np.stack([np.array(Image.open(data / "cropped_aligned" / v / f"{ch.frame[i]:05d}.jpg")) for i in rows])
    err = np.abs(crops - ref).mean()
    other = np.abs(crops - np.roll(ref, 1, axis=0)).mean()  # a neighbouring frame's crop
    unaligned = np.abs(np.roll(ref, 4, axis=2) - ref).mean()  # 4 px off
    assert err < 16 and err < other and err < 1.6 * unaligned, (err, other, unaligned)


def test_resume_after_kill_9_equals_uninterrupted(video_store, tiny_synth_videos, clips, tmp_path):
    data = tiny_synth_videos
    store = tmp_path / "killed.zarr"
    # same thread count as this process: float results are then bit-identical
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "abaw", *_cli_args(data, store, clips)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    n_videos = len(FeatureStore(video_store).videos())
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            done = list(store.glob("videos/*/feat/*/zarr.json"))
            if done:
                break
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    partial = FeatureStore(store)
    complete = [v for v in partial.videos() if partial.feature_keys(v)]
    assert 1 <= len(complete) < n_videos
    r = CliRunner().invoke(main, _cli_args(data, store, clips))
    assert r.exit_code == 0, r.output
    assert f"{len(complete)} already done" in r.output
    _assert_same_cache(video_store, store)
    assert not list((store / ".staging").glob("*"))


needs_real = pytest.mark.skipif(not REAL_FACES.exists(), reason="real face data not available")


@needs_real
def test_real_videos_and_a_corrupt_one(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for name in ("single_face.mp4", "face_noface.mov", "no_face.mp4"):
        os.symlink(REAL_FACES / name, src / name)
    (src / "broken.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with open(REAL_FACES / "single_face.mp4", "rb") as f:
        (src / "truncated.mp4").write_bytes(f.read(50_000))
    store = tmp_path / "real.zarr"
    prev = tmp_path / "prev"
    r = CliRunner().invoke(main, ["extract", str(src), "-o", str(store), "-b", TINY, "-q", "--detect-size", "160",
                                  "--preview", str(prev)])
    assert r.exit_code == 2, r.output  # something failed, the rest completed
    assert "FAILED" in r.output and "broken.mp4" in r.output and "truncated.mp4" in r.output
    fs = FeatureStore(store)
    assert fs.videos() == ["face_noface", "no_face", "single_face"]
    counts = {"single_face": 72, "face_noface": 169, "no_face": 95}
    for v, n in counts.items():
        idx = fs.read_index(v)
        assert idx.frame.tolist() == list(range(1, n + 1)), v
        assert idx.attrs["source"]["size"] == (REAL_FACES / f"{v}.{'mov' if v == 'face_noface' else 'mp4'}").stat().st_size
    assert fs.read_index("single_face").face.all()
    assert not fs.read_index("no_face").face.any()
    f = fs.read_index("face_noface").face
    assert f[:70].mean() > 0.95 and f[80:].mean() < 0.02  # a face, then none
    lm = fs.read_array("single_face", "landmarks")
    assert np.isfinite(lm).all() and np.isnan(fs.read_array("no_face", "landmarks")).all()
    assert sorted(p.stem for p in prev.glob("*.png")) == sorted(counts)
    # the failed files are retried on the next run; the good ones are skipped
    r = CliRunner().invoke(main, ["extract", str(src), "-o", str(store), "-b", TINY, "-q", "--detect-size", "160"])
    assert r.exit_code == 2 and "3 already done" in r.output
    shutil.rmtree(prev)
