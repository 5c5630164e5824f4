"""`abaw extract` on cropped_aligned folders: content, resume/skip, conflicts, --only,
previews, cache info, HDF5 export/import and torchrun-style sharding."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from abaw.cache.hdf5 import import_hdf5
from abaw.cache.store import FeatureStore, load_features
from abaw.cli import main
from abaw.data.annotations import read_annotations
from abaw.errors import AbawError
from abaw.extract.backbones import create_backbone
from abaw.extract.runner import ExtractConfig, extract

TINY = "timm:test_efficientnet_gn?size=64&pretrained=0"
TINY2 = "timm:test_convnext2?size=64&pretrained=0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frames_store(tiny_synth, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("frames") / "cache.zarr"
    s = extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(batch_size=32), progress=False)
    assert s.ok and not s.skipped
    return store


def _snapshot(store: Path) -> dict[str, bytes]:
    """Every file of a store (bytes), except staging leftovers."""
    out = {}
    for p in sorted(store.rglob("*")):
        if p.is_file() and ".staging" not in p.parts:
            out[str(p.relative_to(store))] = p.read_bytes()
    return out


def _assert_same_cache(a: Path, b: Path, runtime: tuple[str, ...] = ()) -> None:
    """Same videos, index, arrays, features and fingerprints; attrs too, except the
    `runtime` settings in the recorded config (how it ran, not what it computed)."""
    fa, fb = FeatureStore(a), FeatureStore(b)
    assert fa.videos() == fb.videos()
    for v in fa.videos():
        ia, ib = fa.read_index(v), fb.read_index(v)
        np.testing.assert_array_equal(ia.frame, ib.frame)
        np.testing.assert_array_equal(ia.face, ib.face)
        np.testing.assert_array_equal(ia.timestamp, ib.timestamp)
        for name in ("box", "landmarks", "score"):
            np.testing.assert_array_equal(fa.read_array(v, name), fb.read_array(v, name))
        strip = lambda attrs: {**attrs, "config": {k: x for k, x in attrs.get("config", {}).items()  # noqa: E731
                                                   if k not in runtime}}
        assert strip(ia.attrs) == strip(ib.attrs), v
        assert fa.feature_keys(v) == fb.feature_keys(v)
        for k in fa.feature_keys(v):
            np.testing.assert_array_equal(fa.read_features(v, k), fb.read_features(v, k), err_msg=f"{v}/{k}")
            assert fa.fingerprint(v, k) == fb.fingerprint(v, k)


def test_frame_folders_match_direct_forward(frames_store, tiny_synth):
    fs = FeatureStore(frames_store)
    folders = sorted(p.name for p in (tiny_synth / "cropped_aligned").iterdir())
    assert fs.videos() == folders
    bb = create_backbone(TINY)
    for v in folders[:3]:
        files = sorted((tiny_synth / "cropped_aligned" / v).glob("*.jpg"))
        idx = fs.read_index(v)
        assert idx.frame.tolist() == [int(f.stem) for f in files]  # gaps kept, numbers from names
        assert idx.face.all() and np.isnan(idx.timestamp).all()
        assert idx.attrs["settings"] == {"kind": "frames", "crop_size": 112}
        imgs = torch.from_numpy(np.stack([np.array(Image.open(f).convert("RGB")) for f in files]))
        want = bb(imgs).numpy()
        got = fs.read_features(v, bb.key).astype(np.float32)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
    assert fs.fingerprint(folders[0], bb.key)["weights_sha256"] == bb.weights_sha256
    t = load_features(frames_store, [bb.key])
    assert len(t) == sum(len(list((tiny_synth / "cropped_aligned" / v).glob("*.jpg"))) for v in folders)


def test_rerun_skips_and_new_backbone_resumes(frames_store, tiny_synth, tmp_path):
    before = _snapshot(frames_store)
    s = extract([tiny_synth / "cropped_aligned"], frames_store, [TINY], progress=False)
    assert s.done == [] and len(s.skipped) == len(FeatureStore(frames_store).videos())
    assert _snapshot(frames_store) == before  # nothing rewritten
    # adding a backbone computes only that one, for every video, and leaves the rest alone
    copy = tmp_path / "c.zarr"
    import shutil

    shutil.copytree(frames_store, copy)
    s = extract([tiny_synth / "cropped_aligned"], copy, [TINY, TINY2], progress=False)
    fs = FeatureStore(copy)
    assert sorted(s.done) == fs.videos()
    k1, k2 = create_backbone(TINY).key, create_backbone(TINY2).key
    assert all(fs.feature_keys(v) == sorted([k1, k2]) for v in fs.videos())
    after = _snapshot(copy)
    assert {k: v for k, v in after.items() if f"/feat/{k2}" not in k} == before


def test_fingerprint_mismatch_refused_unless_overwrite(frames_store, tiny_synth, tmp_path):
    import shutil

    store = tmp_path / "c.zarr"
    shutil.copytree(frames_store, store)
    key = create_backbone(TINY).key
    other = f"{TINY}&norm=face&key={key}"  # same cache key, different preprocessing
    before = _snapshot(store)
    r = CliRunner().invoke(main, ["extract", str(tiny_synth / "cropped_aligned"), "-o", str(store), "-b", other, "-q"])
    assert r.exit_code == 1
    assert "conflict" in r.output and "--overwrite" in r.output and "preprocess" in r.output
    assert _snapshot(store) == before
    r = CliRunner().invoke(main, ["extract", str(tiny_synth / "cropped_aligned"), "-o", str(store), "-b", other,
                                  "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    fs = FeatureStore(store)
    v = fs.videos()[0]
    assert fs.fingerprint(v, key)["preprocess"]["mean"] == [0.499, 0.41, 0.366]
    assert not np.array_equal(fs.read_features(v, key), FeatureStore(frames_store).read_features(v, key))
    # a different crop size is a settings conflict too
    r = CliRunner().invoke(main, ["extract", str(tiny_synth / "cropped_aligned"), "-o", str(store), "-b", other,
                                  "-q", "--crop-size", "96"])
    assert r.exit_code == 1 and "crop_size" in r.output


def test_only_restricts_videos_and_frames(tiny_synth, tmp_path):
    ann_path = tiny_synth / "validation_set_annotations.txt"
    ann = read_annotations(ann_path)
    store = tmp_path / "val.zarr"
    s = extract([tiny_synth / "cropped_aligned"], store, [TINY], ExtractConfig(only=(str(ann_path),)),
                progress=False)
    fs = FeatureStore(store)
    assert tuple(fs.videos()) == ann.videos and s.ok
    for v in ann.videos:
        assert fs.read_index(v).frame.tolist() == ann.frame[ann.video_slice(v)].tolist()
    # another selection for the same videos is a conflict
    with pytest.raises(AbawError, match="frame selection"):
        extract([tiny_synth / "cropped_aligned"], store, [TINY], progress=False)


def test_preview_and_cache_info(frames_store, tiny_synth, tmp_path):
    prev = tmp_path / "prev"
    s = extract([tiny_synth / "cropped_aligned"], tmp_path / "p.zarr", [TINY],
                ExtractConfig(preview=str(prev), only=(str(tiny_synth / "MTL.txt"),)), progress=False)
    pngs = sorted(prev.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(s.done) and pngs
    im = Image.open(pngs[0])
    assert im.width >= 8 * 112 and im.height >= 112  # a grid of sample crops
    r = CliRunner().invoke(main, ["cache", "info", str(frames_store), "--json", str(tmp_path / "i.json")])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "i.json").read_text())
    key = create_backbone(TINY).key
    n = len(FeatureStore(frames_store).videos())
    assert info["videos"] == n and info["backbones"][key]["videos"] == n
    assert info["backbones"][key]["fingerprints"][0]["dim"] == 256
    assert key in r.output and "from frame folders" in r.output


def test_hdf5_round_trip_and_foreign_layouts(frames_store, tmp_path):
    h5 = tmp_path / "f.h5"
    r = CliRunner().invoke(main, ["cache", "export", str(frames_store), str(h5)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["cache", "import", str(h5), str(tmp_path / "back.zarr")])
    assert r.exit_code == 0, r.output
    _assert_same_cache(frames_store, tmp_path / "back.zarr")
    # importing again is a no-op
    rep = import_hdf5(h5, tmp_path / "back.zarr")
    assert rep["skipped"] == rep["videos"] and not rep["failed"]
    # a chosen video and backbone only
    v = FeatureStore(frames_store).videos()[1]
    key = create_backbone(TINY).key
    r = CliRunner().invoke(main, ["cache", "export", str(frames_store), str(tmp_path / "one.h5"), "-b", key,
                                  "--video", v])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "one.h5") as f:
        assert list(f) == [v] and list(f[v]["feat"]) == [key]
        assert json.loads(f[v]["feat"][key].attrs["fingerprint"])["weights_sha256"]

    # foreign layouts: a group per video (features + frame numbers) and a dataset per image
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 7)).astype(np.float32)
    with h5py.File(tmp_path / "per_video.h5", "w") as f:
        f.create_dataset("140/features", data=feats)
        f.create_dataset("140/frame_ids", data=np.array([9, 2, 3, 5, 7]))
        f.create_dataset("140-30-632x360", data=feats[:3])  # bare dataset: frames 1..N
    with h5py.File(tmp_path / "per_image.h5", "w") as f:
        for i, fr in enumerate([3, 1, 2]):
            f.create_dataset(f"video45_1/{fr:05d}.jpg", data=feats[i])
    store = tmp_path / "foreign.zarr"
    rep = import_hdf5(tmp_path / "per_video.h5", store, key="other")
    assert rep["written"] == 2 and not rep["failed"]
    rep = import_hdf5(tmp_path / "per_image.h5", store, key="img")
    t = load_features(store, ["other"], videos=["140", "140-30-632x360"])
    assert t.frame.tolist() == [2, 3, 5, 7, 9, 1, 2, 3]
    np.testing.assert_allclose(t.feats["other"][:5].astype(np.float32), feats[[1, 2, 3, 4, 0]], atol=2e-3)
    t = load_features(store, ["img"], videos=["video45_1"])
    assert t.videos == ("video45_1",) and t.frame.tolist() == [1, 2, 3]
    np.testing.assert_allclose(t.feats["img"].astype(np.float32), feats[[1, 2, 0]], atol=2e-3)
    assert FeatureStore(store).fingerprint("140", "other")["source"]["frames"] == "from frame_ids"
    # the same video with other frames is refused (named), the rest still imports
    with h5py.File(tmp_path / "clash.h5", "w") as f:
        f.create_dataset("140/features", data=feats[:2])
    rep = import_hdf5(tmp_path / "clash.h5", store, key="x")
    assert rep["failed"] and rep["failed"][0]["video"] == "140" and "other frames" in rep["failed"][0]["error"]
    with pytest.raises(AbawError, match="no per-video"):
        with h5py.File(tmp_path / "empty.h5", "w"):
            pass
        import_hdf5(tmp_path / "empty.h5", store)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(frames_store, tiny_synth, tmp_path):
    """Two torchrun-style ranks (RANK / WORLD_SIZE, gloo rendezvous) writing one store give
    the same cache as a single process."""
    store = tmp_path / "sharded.zarr"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "abaw", "extract", str(tiny_synth / "cropped_aligned"), "-o", str(store),
             "-b", TINY, "-q", "--batch-size", "32", "--json", str(tmp_path / "s.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["world"] == 2 and len(summary["done"]) == len(FeatureStore(frames_store).videos())
    assert "[2 ranks]" in outs[0] and outs[1].strip() == ""  # rank 0 reports for both
    _assert_same_cache(frames_store, store)


def test_batchnorm_backbones_can_be_fingerprinted():
    """BatchNorm nets hold 0-d buffers (num_batches_tracked); hashing them must work."""
    a = create_backbone("timm:test_resnet?size=64&pretrained=0")
    b = create_backbone("timm:test_resnet?size=64&pretrained=0")
    assert len(a.weights_sha256) == 64 and a.weights_sha256 == b.weights_sha256


def test_load_chosen_frames(frames_store):
    fs = FeatureStore(frames_store)
    v = fs.videos()[0]
    key = fs.feature_keys(v)[0]
    idx = fs.read_index(v)
    want = idx.frame[[0, 2, 5]].tolist() + [99999]  # a frame the cache lacks is ignored
    t = load_features(frames_store, [key], frames={v: want})
    assert t.videos == (v,) and t.frame.tolist() == want[:3]
    np.testing.assert_array_equal(t.feats[key], fs.read_features(v, key)[[0, 2, 5]])


def test_a_video_with_no_rows_can_be_stored(tmp_path):
    fs = FeatureStore(tmp_path / "c.zarr", "a")
    fs.write_video("v", np.zeros(0, np.int32), np.zeros(0), np.zeros(0, bool), {},
                   extra={"landmarks": np.zeros((0, 5, 2), np.float32)})
    fs.write_features("v", "k", np.zeros((0, 4)), {"spec": "x"})
    assert fs.read_features("v", "k").shape == (0, 4) and len(load_features(fs, ["k"])) == 0


def test_background_writer_gives_the_same_cache(frames_store, tiny_synth, tmp_path):
    """The GPU path writes finished videos from a background thread; force it on CPU."""
    s = extract([tiny_synth / "cropped_aligned"], tmp_path / "bg.zarr", [TINY], ExtractConfig(batch_size=32),
                progress=False, background_writes=True)
    assert s.ok
    _assert_same_cache(frames_store, tmp_path / "bg.zarr")


def test_reader_processes_give_the_same_cache(frames_store, tiny_synth, tmp_path):
    """Image reader processes (forkserver workers, as on a GPU) give the cache of the in-process reader."""
    s = extract([tiny_synth / "cropped_aligned"], tmp_path / "w.zarr", [TINY], ExtractConfig(batch_size=32, workers=2),
                progress=False)
    assert s.ok
    _assert_same_cache(frames_store, tmp_path / "w.zarr", runtime=("workers",))


@pytest.mark.parametrize("spec, why", [("timm:resnet18?sizee=64&pretrained=0", r"unknown options \['sizee'\]"),
                                       ("timm:resnet18?size=abc", "option size='abc'"),
                                       ("nope:x", "unknown backbone family")])
def test_a_bad_spec_creates_no_store(spec, why, tiny_synth, tmp_path, monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    store = tmp_path / "bad.zarr"
    with pytest.raises(AbawError, match=why):
        extract([tiny_synth / "cropped_aligned"], store, [TINY, spec], ExtractConfig(), progress=False)
    assert not store.exists()
    r = CliRunner().invoke(main, ["extract", str(tiny_synth / "cropped_aligned"), "-o", str(store), "-b", spec, "-q"])
    assert r.exit_code != 0 and not store.exists()
    assert re.search(why, r.output), r.output


def test_an_unreachable_hub_creates_no_store(tiny_synth, tmp_path, monkeypatch):
    import timm

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    store = tmp_path / "hub.zarr"
    with pytest.raises(AbawError, match="could not get pretrained weights .*offline"):
        extract([tiny_synth / "cropped_aligned"], store, ["timm:resnet18"], ExtractConfig(), progress=False)
    assert not store.exists()
