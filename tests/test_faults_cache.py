"""Fault injection on the feature cache (issue 11 §1, §4, §5 HDF5): every damage is a one-line
error naming the store, video and array; `cache verify` names and repairs it; the other
videos and what was written before stay unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from abaw.cache import lock
from abaw.cache.hdf5 import export_hdf5, import_hdf5
from abaw.cache.store import FeatureStore, load_features
from abaw.cache.verify import verify_store
from abaw.cli import main
from abaw.errors import AbawError

FP = {"spec": "x:y", "dim": 6, "preprocess": {}, "weights_sha256": "aa"}
ROOT = Path(__file__).resolve().parents[1]
TINY = "timm:test_efficientnet_gn?size=64&pretrained=0"


def _feats(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((n, 6)).astype(np.float16)


@pytest.fixture
def store(tmp_path) -> Path:
    p = tmp_path / "c.zarr"
    with FeatureStore(p, "a") as fs:
        for i, v in enumerate(["a", "b", "c"]):
            n = 5 + i
            fs.write_video(v, np.arange(1, n + 1), np.arange(n) / 30.0, np.ones(n, bool), {"source": {"path": v}})
            fs.write_features(v, "k", _feats(i, n), FP)
    return p


def _snapshot(store: Path, skip: str = "\0") -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and ".staging" not in p.parts and ".lock" != p.name and skip not in str(p)}


def _one_line(msg: str, *words: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _assert_cli_error(res, *words: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output and res.exception is None or \
        isinstance(res.exception, SystemExit), res.output
    _one_line(lines[0], *words)


def _chunk(store: Path, v: str = "b") -> Path:
    return store / "videos" / v / "feat" / "k" / "c" / "0" / "0"


# ------------------------------------------------------------------ damage in a feature array

@pytest.mark.parametrize("damage", ["delete", "random", "empty", "zarr_json", "marker"])
def test_damaged_features_are_named_on_load_and_by_verify(store, damage):
    before = _snapshot(store, skip="/b/")
    c = _chunk(store)
    if damage == "delete":
        c.unlink()
    elif damage == "random":
        c.write_bytes(np.random.default_rng(0).bytes(c.stat().st_size))  # same size: only the crc sees it
    elif damage == "empty":
        c.write_bytes(b"")
    elif damage == "zarr_json":
        (store / "videos/b/feat/k/zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')
    else:
        (store / "videos/b/feat/k/.abaw_done.json").unlink()
    with pytest.raises(AbawError) as e:
        load_features(store, ["k"])
    _one_line(str(e.value), str(store), "'b'", "feat/k", "damaged", "cache verify")
    fs = FeatureStore(store)
    assert not fs.has_features("b", "k") and fs.has_features("a", "k")  # extract redoes it
    t = load_features(store, ["k"], videos=["a", "c"])  # the others still load, unchanged
    np.testing.assert_array_equal(t.feats["k"][t.video_slice("c")], _feats(2, 7))
    info = _cli("cache", "info", str(store))  # info no longer stays silent
    assert info.exit_code == 0 and "DAMAGED: 1 units (e.g. b" in info.output, info.output
    res = _cli("cache", "verify", str(store))
    assert res.exit_code == 1 and "DAMAGED video 'b', array 'feat/k'" in res.output, res.output
    assert "'a'" not in res.output and "'c'" not in res.output
    res = _cli("cache", "verify", str(store), "--repair")
    assert res.exit_code == 0 and "REMOVED video 'b', array 'feat/k'" in res.output
    assert FeatureStore(store).has_video("b") and not (store / "videos/b/feat/k").exists()
    assert _cli("cache", "verify", str(store)).exit_code == 0
    assert _snapshot(store, skip="/b/") == before


def test_damaged_index_and_root(store):
    (store / "videos/a/frame/c/0").write_bytes(b"\0\0")
    with pytest.raises(AbawError) as e:
        load_features(store, ["k"])
    _one_line(str(e.value), "'a'", "'frame'", "damaged")
    (store / "videos/c/zarr.json").write_bytes(b"\xff not json")
    r = verify_store(store)
    assert {(p.video, p.array) for p in r.damaged} == {("a", "frame"), ("c", "zarr.json")}
    (store / "zarr.json").write_text("{")
    _assert_cli_error(_cli("cache", "info", str(store)), str(store), "root zarr.json is damaged")
    _assert_cli_error(_cli("cache", "verify", str(store)), "root zarr.json is damaged")


def test_non_finite_features_are_refused(store):
    before = _snapshot(store)
    fs = FeatureStore(store, "a")
    bad = np.zeros((5, 6), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(AbawError) as e:
        fs.write_features("a", "k2", bad, FP)
    _one_line(str(e.value), "'a'", "non-finite")
    with pytest.raises(AbawError, match="non-finite"):
        fs.write_features("a", "k2", np.full((5, 6), 1e6), FP)  # beyond float16: inf
    fs.close()
    assert _snapshot(store) == before


# ------------------------------------------------------------------ legacy stores

def _legacy(path: Path, nan: bool = False) -> Path:
    """A store as written before checksums and done-markers (zstd, no crc32c)."""
    import zarr
    from zarr.codecs import ZstdCodec

    g = zarr.open_group(str(path), mode="w")
    g.attrs.update({"abaw_cache": 1})
    vg = g.create_group("videos")
    for i, v in enumerate(["a", "b"]):
        gv = vg.create_group(v)
        fr = np.arange(1, 6, dtype=np.int32)
        for name, arr in (("frame", fr), ("timestamp", fr / 30.0), ("face", np.ones(5, bool))):
            gv.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape,
                            compressors=(ZstdCodec(level=1),))[...] = arr
        gv.attrs.update({"n_frames": 5, "n_faces": 5})
        f = _feats(i, 5)
        if nan and v == "b":
            f[1, 1] = np.nan
        a = gv.create_group("feat").create_array("k", shape=f.shape, dtype="float16", chunks=f.shape,
                                                  compressors=(ZstdCodec(level=1),))
        a[...] = f
        a.attrs["fingerprint"] = FP
    return path


def test_legacy_store_loads_and_verify_says_unverifiable(tmp_path):
    p = _legacy(tmp_path / "old.zarr")
    t = load_features(p, ["k"])
    np.testing.assert_array_equal(t.feats["k"][t.video_slice("b")], _feats(1, 5))
    res = _cli("cache", "verify", str(p))
    assert res.exit_code == 0 and "4 legacy (unverifiable)" in res.output and "to upgrade" in res.output
    # the upgrade path it names: export + import gives a verified store with the same features
    assert _cli("cache", "export", str(p), str(tmp_path / "all.h5")).exit_code == 0
    assert _cli("cache", "import", str(tmp_path / "all.h5"), str(tmp_path / "new.zarr")).exit_code == 0
    r = verify_store(tmp_path / "new.zarr")
    assert r.ok and r.verified == 4 and not r.legacy
    np.testing.assert_array_equal(load_features(tmp_path / "new.zarr", ["k"]).feats["k"], t.feats["k"])
    # a new unit written into a legacy store is marked; the old ones keep loading
    with FeatureStore(p, "a") as fs:
        fs.write_features("a", "k2", _feats(5, 5), FP)
    assert verify_store(p).verified == 1
    t2 = load_features(p, ["k", "k2"], videos=["a"])  # a legacy index and features beside a marked unit
    np.testing.assert_array_equal(t2.feats["k2"], _feats(5, 5))
    np.testing.assert_array_equal(t2.feats["k"], t.feats["k"][t.video_slice("a")])


def test_legacy_store_damage_and_nan(tmp_path):
    p = _legacy(tmp_path / "old.zarr", nan=True)
    with pytest.raises(AbawError) as e:
        load_features(p, ["k"])
    _one_line(str(e.value), "'b'", "feat/k", "non-finite")
    c = p / "videos/a/feat/k/c/0/0"
    c.write_bytes(b"garbage" * 3)  # zstd cannot decode it
    with pytest.raises(AbawError) as e:
        load_features(p, ["k"], videos=["a"])
    _one_line(str(e.value), "'a'", "feat/k", "damaged")
    r = verify_store(p)
    assert sorted(q.video for q in r.damaged) == ["a", "b"]


# ------------------------------------------------------------------ writers: lock, staging

_HOLD = """
import sys, time
from abaw.cache.store import FeatureStore
fs = FeatureStore(sys.argv[1], "a")
print("ready", flush=True)
time.sleep(60)
"""


def test_concurrent_writer_is_refused_and_lock_dies_with_it(store):
    before = _snapshot(store)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(store)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(AbawError) as e:
            FeatureStore(store, "a")
        _one_line(str(e.value), str(store), f"is being written by PID {p.pid} on {lock.host()}")
        res = _cli("cache", "verify", str(store), "--repair")
        _assert_cli_error(res, "is being written by PID")
        res = _cli("cache", "import", str(store / "nothing.h5"), str(store))
        assert res.exit_code != 0
        assert FeatureStore(store, "r").videos() == ["a", "b", "c"]  # readers are not blocked
    finally:
        p.kill()
        p.wait()
    with FeatureStore(store, "a") as fs:  # a killed writer leaves no lock behind
        assert fs.has_features("a", "k")
    assert _snapshot(store) == before


def test_stale_staging_of_dead_writers_is_cleaned_but_not_of_live_ones(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s = store / ".staging"
        for pid in (dead.pid, live.pid):
            (s / f"{lock.host()}-{pid}-0123" / "unit").mkdir(parents=True)
        (s / f"{dead.pid}-old").mkdir()  # the older naming
        with FeatureStore(store, "a"):
            pass
        assert sorted(x.name for x in s.iterdir()) == [f"{lock.host()}-{live.pid}-0123"]
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ HDF5 import

def _ours(tmp_path: Path, store: Path) -> Path:
    out = tmp_path / "e.h5"
    export_hdf5(store, out)
    return out


@pytest.mark.parametrize("case", ["reversed", "duplicate", "no_attrs", "bad_fp_json", "short_rows", "huge",
                                  "external_link", "dotdot_key", "frame_2_32"])
def test_malformed_hdf5_reports_each_video_and_imports_the_others(store, tmp_path, case):
    import h5py

    src = _ours(tmp_path, store)
    with h5py.File(src, "a") as f:
        g = f["b"]
        if case in ("reversed", "duplicate", "frame_2_32"):
            fr = {"reversed": np.arange(6, 0, -1), "duplicate": np.array([1, 2, 2, 3, 4, 5]),
                  "frame_2_32": np.arange(1, 7) + 2**32}[case]
            del g["frame"]
            g.create_dataset("frame", data=fr.astype(np.int64))
        elif case == "no_attrs":
            del g.attrs["attrs"]
        elif case == "bad_fp_json":
            g["feat/k"].attrs["fingerprint"] = "{not json"
        elif case == "short_rows":
            del g["feat/k"]
            g["feat"].create_dataset("k", data=np.zeros((3, 6), np.float16))
            g["feat/k"].attrs["fingerprint"] = json.dumps(FP)
        elif case == "huge":
            del g["feat/k"]
            g["feat"].create_dataset("k", shape=(10**12, 768), dtype=np.float16, chunks=(1024, 768))
            g["feat/k"].attrs["fingerprint"] = json.dumps(FP)
        elif case == "external_link":
            with h5py.File(tmp_path / "other.h5", "w") as o:
                o.create_dataset("x", data=np.zeros((6, 6), np.float16))
            del g["feat/k"]
            g["feat"]["k"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "x")
        elif case == "dotdot_key":
            g["feat"].move("k", "..k")  # a name the cache refuses ('..' itself is no HDF5 name)
    new = tmp_path / "new.zarr"
    res = _cli("cache", "import", str(src), str(new))
    assert res.exit_code == 2, res.output
    failed = [ln for ln in res.output.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED b: ") and "Traceback" not in res.output, res.output
    fs = FeatureStore(new)
    assert fs.has_features("a", "k") and fs.has_features("c", "k") and not fs.has_features("b", "k")
    np.testing.assert_array_equal(fs.read_features("c", "k"), _feats(2, 7))


def test_generic_hdf5_external_link_and_bad_key(store, tmp_path):
    import h5py

    src = tmp_path / "g.h5"
    with h5py.File(tmp_path / "other.h5", "w") as o:
        o.create_dataset("x", data=np.zeros((4, 6), np.float32))
    with h5py.File(src, "w") as f:
        f.create_dataset("good", data=np.ones((4, 6), np.float32))
        f["linked"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "x")
    r = import_hdf5(src, tmp_path / "n.zarr", key="k")
    assert r["written"] == 1 and [x["video"] for x in r["failed"]] == ["linked"]
    _one_line(r["failed"][0]["error"], "external link", "refused")
    with pytest.raises(AbawError, match="cannot be stored"):
        import_hdf5(src, tmp_path / "n.zarr", key="..")


# ------------------------------------------------------------------ verify, repair, re-extract

def test_repair_then_extract_redoes_exactly_the_damaged_video(tiny_synth, tmp_path):
    from abaw.extract.runner import ExtractConfig, extract

    store = tmp_path / "x.zarr"
    s = extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(batch_size=32), progress=False)
    assert s.ok
    fs = FeatureStore(store)
    vids = fs.videos()
    key = fs.feature_keys(vids[0])[0]
    original = load_features(store, [key])
    victim = vids[1]
    c = store / "videos" / victim / "feat" / key / "c" / "0" / "0"
    c.write_bytes(c.read_bytes()[:-7] + b"garbage")
    res = _cli("cache", "verify", str(store))
    assert res.exit_code == 1 and f"DAMAGED video {victim!r}, array 'feat/{key}'" in res.output
    assert res.output.count("DAMAGED") == 1
    assert _cli("cache", "verify", str(store), "--repair").exit_code == 0
    s = extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(batch_size=32), progress=False)
    assert s.ok and s.done == [victim] and sorted(s.skipped) == sorted(v for v in vids if v != victim)
    again = load_features(store, [key])
    np.testing.assert_array_equal(again.feats[key], original.feats[key])
    assert verify_store(store).ok


def test_extract_redoes_a_damaged_unit_without_repair(tiny_synth, tmp_path):
    """`extract` does not call a damaged unit done: it replaces it."""
    from abaw.extract.runner import ExtractConfig, extract

    store = tmp_path / "y.zarr"
    extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(batch_size=32), progress=False)
    fs = FeatureStore(store)
    v = fs.videos()[0]
    key = fs.feature_keys(v)[0]
    (store / "videos" / v / "feat" / key / "c" / "0" / "0").unlink()
    s = extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(batch_size=32), progress=False)
    assert s.ok and s.done == [v]
    assert verify_store(store).ok
