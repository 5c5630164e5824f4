"""The Zarr feature cache: atomic units, refusal to overwrite, loading into RAM."""

from __future__ import annotations

import numpy as np
import pytest

from abaw.cache.store import FeatureStore, load_features
from abaw.errors import AbawError

FP = {"spec": "x:y", "dim": 4, "preprocess": {}, "weights_sha256": "aa"}


def _video(fs, vid, n, key="k", fp=FP, face=None):
    face = np.ones(n, bool) if face is None else face
    fs.write_video(vid, np.arange(1, n + 1) * 2, np.arange(n) / 30.0, face, {"source": {"path": vid}})
    feats = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    fs.write_features(vid, key, feats, fp)
    return feats


def test_write_read_roundtrip(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    f = _video(fs, "140", 5, face=np.array([1, 1, 0, 1, 1], bool))
    _video(fs, "140-30-632x360", 3)
    assert fs.videos() == ["140", "140-30-632x360"]
    idx = fs.read_index("140")
    assert idx.frame.tolist() == [2, 4, 6, 8, 10] and idx.attrs["n_faces"] == 4
    np.testing.assert_array_equal(fs.read_features("140", "k"), f.astype(np.float16))
    assert fs.fingerprint("140", "k") == FP
    t = load_features(tmp_path / "c.zarr", ["k"])
    assert t.videos == ("140", "140-30-632x360") and len(t) == 8 and t.feats["k"].dtype == np.float16
    assert t.video_slice("140-30-632x360") == slice(5, 8)
    t2 = load_features(fs, ["k"], videos=["140"], faces_only=True)
    assert t2.frame.tolist() == [2, 4, 8, 10]
    assert list((tmp_path / "c.zarr" / ".staging").iterdir()) == []


def test_units_are_not_overwritten_unless_asked(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    _video(fs, "v", 3)
    with pytest.raises(AbawError, match="already exists"):
        fs.write_features("v", "k", np.zeros((3, 4)), FP)
    fs.write_features("v", "k", np.ones((3, 4)), FP, overwrite=True)
    assert (fs.read_features("v", "k") == 1).all()
    with pytest.raises(ValueError, match="do not match"):
        fs.write_features("v", "k2", np.ones((4, 4)), FP)


def test_missing_videos_and_fingerprint_conflicts(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    _video(fs, "a", 2)
    _video(fs, "b", 2, fp={**FP, "weights_sha256": "bb"})
    with pytest.raises(AbawError, match="different fingerprints"):
        load_features(fs, ["k"])
    with pytest.raises(AbawError, match="lack features"):
        load_features(fs, ["k"], videos=["a", "zzz"])
    assert load_features(fs, ["k"], videos=["a", "zzz"], missing="skip").videos == ("a",)


def test_interrupted_write_leaves_no_unit(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    _video(fs, "v", 3)
    # simulate a crash mid-write: a staging folder with a half unit, never installed
    (tmp_path / "c.zarr" / ".staging" / "123-dead" / "unit").mkdir(parents=True)
    fs.close()
    fs2 = FeatureStore(tmp_path / "c.zarr", "a")  # a dead writer's entry is cleared on open
    assert fs2.feature_keys("v") == ["k"] and fs2.videos() == ["v"]
    assert not (tmp_path / "c.zarr" / ".staging" / "123-dead").exists()


def test_not_a_cache(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("hi")
    with pytest.raises(AbawError, match="not a feature cache"):
        FeatureStore(tmp_path / "x", "a")
    with pytest.raises(AbawError, match="no zarr.json"):
        FeatureStore(tmp_path / "y", "r")
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    with pytest.raises(AbawError, match="cannot be stored"):
        fs.write_video("../evil", [1], [0.0], [True], {})


def test_load_selections_match_per_video_reads(tmp_path):
    """Whole videos, `faces_only` and `frames` selections in one load give the rows that
    reading each video does; the index of a whole video is read by the pool."""
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    rng = np.random.default_rng(0)
    faces = {v: rng.random(n) < 0.6 for v, n in [("a", 7), ("b", 1), ("c", 12), ("d", 0)]}
    for v, face in faces.items():
        _video(fs, v, len(face), face=face)
        fs.write_features(v, "k2", rng.standard_normal((len(face), 3)), {**FP, "dim": 3})
    for faces_only in (False, True):
        for frames in (None, {"a": [2, 6, 99], "c": list(range(2, 25, 4))}):
            t = load_features(fs, ["k", "k2"], videos=["c", "a", "b", "d"], faces_only=faces_only, frames=frames)
            assert t.videos == ("c", "a", "b", "d") and t.dims() == {"k": 4, "k2": 3}
            for v in t.videos:
                idx = fs.read_index(v)
                keep = np.isin(idx.frame, frames[v]) if frames and v in frames else np.ones(len(idx.frame), bool)
                keep &= idx.face if faces_only else True
                s = t.video_slice(v)
                np.testing.assert_array_equal(t.frame[s], idx.frame[keep])
                np.testing.assert_array_equal(t.face[s], idx.face[keep])
                np.testing.assert_array_equal(t.timestamp[s], idx.timestamp[keep])
                for k in ("k", "k2"):
                    np.testing.assert_array_equal(t.feats[k][s], fs.read_features(v, k)[keep])


def test_features_whose_rows_differ_from_the_index_are_damage(tmp_path):
    import shutil

    p = tmp_path / "c.zarr"
    with FeatureStore(p, "a") as fs:
        _video(fs, "a", 5)
        _video(fs, "b", 6)
    shutil.rmtree(p / "videos/a/feat/k")
    shutil.copytree(p / "videos/b/feat/k", p / "videos/a/feat/k")  # a whole, marked unit of 6 rows
    with pytest.raises(AbawError) as e:
        load_features(p, ["k"])
    msg = str(e.value)
    assert "\n" not in msg and "video 'a', array 'feat/k' is damaged (6 rows, its index has 5)" in msg, msg
    assert len(load_features(p, ["k"], videos=["b"])) == 6
