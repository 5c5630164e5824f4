"""Fault campaign (issue 11 §3, §5): `extract --allow-partial` keeps a truncated video's good
frames, marked partial; frame numbers beyond 2^31 - 1 in frame-folder names are refused
with the path (never wrapped), and the cache refuses them too."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_faults import TINY, damaged_videos, invoke, tree_digest  # noqa: F401 - damaged_videos is a fixture

from abaw.cache.store import FeatureStore
from abaw.data.labels import MAX_FRAME
from abaw.errors import AbawError

pytestmark = pytest.mark.usefixtures("one_thread")


def _args(src, store, *extra):
    return ["extract", src, "-o", store, "-b", TINY, "-q", "--min-face", "40", "--detect-batch", "8", *extra]


@pytest.mark.parametrize("name", ["cut-mp4", "garbage-mkv"])
def test_allow_partial_keeps_the_good_frames_of_a_damaged_video(damaged_videos, tmp_path, name):  # noqa: F811
    from abaw.extract.video import DamagedVideoError, iter_frames

    bad = damaged_videos[name]
    with pytest.raises(DamagedVideoError) as ei:
        for _ in iter_frames(bad, chunk=4):
            pass
    decoded, expected = ei.value.decoded, ei.value.expected
    src = tmp_path / "videos"
    src.mkdir()
    os.symlink(damaged_videos["good"], src / "good.mp4")
    os.symlink(bad, src / f"cut{bad.suffix}")
    store = tmp_path / "store.zarr"

    r = invoke(_args(src, store, "--allow-partial", "--json", tmp_path / "s.json"))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "FAILED" not in r.output
    assert "2 videos extracted" in r.output and "0 failed, 1 partial" in r.output
    part = [ln for ln in r.output.splitlines() if ln.startswith("PARTIAL")]
    assert part == [part[0]] and part[0].startswith(f"PARTIAL cut: {decoded} of {expected} frames decoded, kept (")
    s = json.loads((tmp_path / "s.json").read_text())
    assert [(p["video"], p["source"], p["decoded"], p["expected"]) for p in s["partial"]] == [
        ("cut", str(src / f"cut{bad.suffix}"), decoded, expected)]
    fs = FeatureStore(store)
    idx = fs.read_index("cut")
    assert idx.frame.tolist() == list(range(1, decoded + 1))  # the good frames, numbered as decoded
    assert len(fs.read_features("cut", fs.feature_keys("cut")[0])) == decoded
    assert fs.video_attrs("cut")["partial"]["decoded"] == decoded
    marker = json.loads((store / "videos" / "cut" / ".abaw_done.json").read_text())
    assert marker["partial"]["expected"] == expected
    assert "partial" not in fs.video_attrs("good")
    assert invoke(["cache", "verify", store]).exit_code == 0  # partial, not damaged

    # a rerun keeps it (already done) and still names it partial; nothing changes
    before = tree_digest(store / "videos")
    r = invoke(_args(src, store))
    assert r.exit_code == 2, r.output
    assert "2 already done, 0 failed, 1 partial" in r.output and part[0] in r.output
    assert tree_digest(store / "videos") == before


def _frame_folder(root, video, numbers):
    from PIL import Image

    d = root / video
    d.mkdir(parents=True)
    for n in numbers:
        Image.new("RGB", (32, 32), (90, 90, 90)).save(d / f"{n:05d}.jpg")
    return d


@pytest.mark.parametrize("n", [2**31, 2**32 + 1, 2**63, 2**64 + 1])
def test_frame_folder_names_beyond_the_max_are_refused(tmp_path, n):
    from abaw.extract.frames import list_frames

    d = _frame_folder(tmp_path / "frames", "v1", [1, n])
    with pytest.raises(AbawError, match=rf"^{d / f'{n:05d}.jpg'}: frame number {n} is out of range "
                                        rf"\(max {MAX_FRAME}\)$"):
        list_frames(d)
    ok = _frame_folder(tmp_path / "frames2", "v2", [1, MAX_FRAME])
    assert list_frames(ok).frame.tolist() == [1, MAX_FRAME]


def test_extract_names_the_bad_frame_file_and_does_the_other_folders(tmp_path):
    root = tmp_path / "frames"
    _frame_folder(root, "v0", [1, 2])
    _frame_folder(root, "v1", [1, 2**32 + 1])  # would wrap to a second frame 1 as int32
    store = tmp_path / "store.zarr"
    r = invoke(["extract", root, "-o", store, "-b", TINY, "-q"])
    assert r.exit_code == 2, r.output
    failed = [ln for ln in r.output.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and f"{root / 'v1' / '4294967297.jpg'}: frame number 4294967297 is out of range" \
        in failed[0], r.output
    assert FeatureStore(store).videos() == ["v0"]


def test_the_cache_refuses_frame_numbers_it_cannot_hold(tmp_path):
    fs = FeatureStore(tmp_path / "s.zarr", "a")
    for bad in ([1, 2**31], [0, 1], [1, 2**32 + 1]):
        with pytest.raises(AbawError, match=rf"video 'v': frame numbers must lie in 1..{MAX_FRAME}"):
            fs.write_video("v", np.asarray(bad, np.int64), np.zeros(2), np.ones(2, bool), {})
    assert fs.videos() == []
    fs.write_video("v", np.asarray([1, MAX_FRAME], np.int64), np.zeros(2), np.ones(2, bool), {})
    assert FeatureStore(tmp_path / "s.zarr").read_index("v").frame.tolist() == [1, MAX_FRAME]
