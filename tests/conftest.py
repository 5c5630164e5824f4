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
    """A tiny dataset without video files (fast): 4 train, 3 val, 3 test tracks."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    generate(out, SynthConfig(seed=1, train_videos=4, val_videos=3, test_videos=3, min_frames=30,
                              max_frames=50, videos=False), jobs=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_synth_videos(tmp_path_factory) -> Path:
    """A tiny dataset with mp4 files (includes a `_left`/`_right` two-person clip)."""
    out = tmp_path_factory.mktemp("data") / "tiny_videos"
    generate(out, SynthConfig(seed=2, train_videos=3, val_videos=2, test_videos=1, min_frames=24,
                              max_frames=36, videos=True), jobs=1, progress=False)
    return out


@pytest.fixture
def write(tmp_path):
    """Write text to a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    return _write
