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
