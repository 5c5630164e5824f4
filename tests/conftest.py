"""Shared fixtures: small synthetic datasets generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from abaw.data.synth import SynthConfig, generate


def _find_real_faces() -> Path:
    """`$ABAW_REAL_FACES`, else the nearest `shared/data/real_faces` above the checkout
    (works from the main checkout and from worktrees one level deeper)."""
    import os

    if os.environ.get("ABAW_REAL_FACES"):
        return Path(os.environ["ABAW_REAL_FACES"])
    here = Path(__file__).resolve().parents[1]
    for d in here.parents:
        cand = d / "shared" / "data" / "real_faces"
        if cand.exists():
            return cand
    return here.parent / "shared" / "data" / "real_faces"


REAL_FACES = _find_real_faces()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny models train much faster on one thread, above all
    when other jobs share the cores (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny dataset without video files (fast): 4 train, 3 val, 3 test tracks, sparse labels
    (the default `s-aff-wild2` profile)."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate(out, SynthConfig(seed=1, train_videos=4, val_videos=3, test_videos=3, min_frames=10,
                              max_frames=60, videos=False), jobs=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_synth_dense(tmp_path_factory) -> Path:
    """`tiny_synth` as it was before sparse labels: profile `dense`, every face frame labelled."""
    out = tmp_path_factory.mktemp("data") / "tiny_dense"
    generate(out, SynthConfig(seed=1, train_videos=4, val_videos=3, test_videos=3, min_frames=30,
                              max_frames=50, videos=False, profile="dense"), jobs=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_synth_videos(tmp_path_factory) -> Path:
    """A tiny dataset with mp4 files (includes a `_left`/`_right` two-person clip); sparse
    labels, the crop of every face frame (`all_crops`)."""
    out = tmp_path_factory.mktemp("data") / "tiny_videos"
    generate(out, SynthConfig(seed=2, train_videos=3, val_videos=2, test_videos=1, min_frames=4,
                              max_frames=12, videos=True, all_crops=True), jobs=1, progress=False)
    return out


@pytest.fixture
def write(tmp_path):
    """Write text to a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return _write


# ---------------------------------------------------------------- feature caches for head training


@pytest.fixture(scope="session")
def cache_crops():
    """`cache_crops(root, store_path, spec)`: extract `spec` over root/cropped_aligned; its cache key."""
    return _cache_crops


@pytest.fixture(scope="session")
def synthetic_split():
    """`synthetic_split(store, prefix, n_videos, length, proj, noise, rng)`: write synthetic features
    whose labels follow `abaw synth`'s latent processes; returns their Annotations."""
    from abaw.data.synth_features import synthetic_feature_split

    return synthetic_feature_split


def _cache_crops(root: Path, store_path: Path, spec: str, batch: int = 64) -> str:
    """Extract backbone `spec` over `root/cropped_aligned` with `abaw extract`'s runner; returns its cache key."""
    from abaw.extract.backbones import spec_key
    from abaw.extract.runner import ExtractConfig, extract

    summary = extract([root / "cropped_aligned"], store_path, [spec], ExtractConfig(batch_size=batch), progress=False)
    assert summary.ok, summary.failed
    return spec_key(spec)




# ---------------------------------------------------------------- runs on a backbone that rebuilds offline


ONET_TINY = dict(temporal="none", epochs=2, min_steps=0, d_model=16, batch_frames=128, window=8)


@pytest.fixture(scope="session")
def onet_cache(tmp_path_factory, tiny_synth) -> tuple[Path, str]:
    """(folder, key): `folder/c.zarr` holds mtcnn:onet features of tiny_synth's crops (MTCNN's
    weights ship with facenet-pytorch, so exported systems of runs on them rebuild offline)."""
    root = tmp_path_factory.mktemp("export")
    return root, _cache_crops(tiny_synth, root / "c.zarr", "mtcnn:onet")


@pytest.fixture(scope="session")
def onet_train(onet_cache, tiny_synth):
    """`onet_train(name, **settings)`: a small run on the onet features (ONET_TINY unless
    overridden), trained once per session into `folder/name`; its path."""
    from abaw.data.annotations import read_annotations
    from abaw.pipeline.train.config import TrainConfig
    from abaw.pipeline.train.loop import train

    root, key = onet_cache
    tr = read_annotations(tiny_synth / "training_set_annotations.txt")
    va = read_annotations(tiny_synth / "validation_set_annotations.txt")
    done: dict[str, Path] = {}

    def _train(name: str, **settings) -> Path:
        if name not in done:
            cfg = TrainConfig.create(backbones=(key,), **{**ONET_TINY, **settings})
            done[name] = train(cfg, root / "c.zarr", tr, va, root / name, progress=False).path
        return done[name]

    return _train


@pytest.fixture(scope="session")
def onet_run(onet_train) -> Path:
    """A small trained run (VA + EXPR + AU) on mtcnn:onet features of the synthetic crops
    (`onet_run.parent / "c.zarr"`: its cache)."""
    return onet_train("run")
