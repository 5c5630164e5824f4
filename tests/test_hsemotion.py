"""HSEmotion backbones: download once into the user cache, verified; whole-model pickles
only with explicit trust, and even then loaded without the file's classes."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import timm
import torch

import abaw.extract.backbones.hsemotion as hs
from abaw.errors import AbawError
from abaw.extract.backbones import create_backbone
from abaw.extract.backbones.hsemotion import git_blob_sha1, state_dict_from_model_pickle


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A whole pickled timm model shaped like enet_b0_8_va_mtl (random weights, 8+2 outputs)."""
    torch.manual_seed(0)
    m = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10).eval()
    path = tmp_path_factory.mktemp("hs") / "enet_b0_8_va_mtl.pt"
    torch.save(m, path)
    m.reset_classifier(0)
    return path, m


@pytest.fixture
def pinned(model_file, monkeypatch, tmp_path):
    """The table entry pinned to our file's git blob id; downloads copy the local file."""
    path, _ = model_file
    monkeypatch.setenv("ABAW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(hs.MODELS, "enet_b0_8_va_mtl",
                        hs.HSModel(("tf_efficientnet_b0",), 224, git_blob_sha1(path)))
    calls = []

    def fetch(url, dst):
        calls.append(url)
        with open(path, "rb") as f:
            shutil.copyfileobj(f, dst)

    monkeypatch.setattr(hs, "FETCH", fetch)
    return calls


def test_download_verify_cache_and_features(model_file, pinned, tmp_path):
    path, ref = model_file
    with pytest.raises(AbawError, match="trust_pickle=1"):
        create_backbone("hsemotion:enet_b0_8_va_mtl")
    bb = create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1")
    # downloaded once (the refused load above already verified and kept the file)
    assert pinned == [hs.URL.format(commit=hs.COMMIT, name="enet_b0_8_va_mtl")]
    cached = tmp_path / "cache" / "hsemotion" / "enet_b0_8_va_mtl.pt"
    meta = json.loads(cached.with_name("enet_b0_8_va_mtl.pt.json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and meta["verified_by"] == "git blob id"
    assert bb.dim == 1280 and bb.preprocess.input_size == 224 and bb.key == "hsemotion_enet_b0_8_va_mtl"
    assert bb.spec == "hsemotion:enet_b0_8_va_mtl" and bb.source["arch"] == "tf_efficientnet_b0"
    x = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), ref(bb.preprocess(x)))
    # second use: from the cache, no download; a tampered cache file is refused
    create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1")
    assert len(pinned) == 1
    with open(cached, "ab") as f:
        f.write(b"x")
    with pytest.raises(AbawError, match="corrupt or was replaced"):
        create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1")


def test_unverifiable_or_wrong_files_are_refused(model_file, pinned, tmp_path, monkeypatch):
    path, _ = model_file
    url = path.as_uri()
    monkeypatch.setattr(hs, "FETCH", hs._fetch)  # real urllib, file:// URL
    with pytest.raises(AbawError, match="no pinned checksum"):
        create_backbone(f"hsemotion:enet_b0_8_va_mtl?url={url}&trust_pickle=1")
    with pytest.raises(AbawError, match="does not match"):
        create_backbone(f"hsemotion:enet_b0_8_va_mtl?url={url}&sha256={'0' * 64}&trust_pickle=1")
    assert not list((tmp_path / "cache" / "hsemotion").glob("*.pt"))  # nothing half-verified left behind
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    bb = create_backbone(f"hsemotion:enet_b0_8_va_mtl?url={url}&sha256={sha}&trust_pickle=1")
    assert bb.source["file_sha256"] == sha
    # a local file is checked against the pinned blob id too
    bad = tmp_path / "other.pt"
    bad.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(AbawError, match="pinned"):
        create_backbone(f"hsemotion:enet_b0_8_va_mtl?file={bad}&trust_pickle=1")
    with pytest.raises(AbawError, match="unknown HSEmotion model"):
        create_backbone("hsemotion:nope")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_model_pickles_are_read_without_running_their_classes(model_file, tmp_path):
    path, ref = model_file
    sd = state_dict_from_model_pickle(path)
    full = torch.load(path, weights_only=False)  # noqa: S614 - our own file
    assert set(sd) == set(full.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in full.state_dict().items())
    marker = tmp_path / "marker"
    torch.save({"payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(AbawError):
        state_dict_from_model_pickle(tmp_path / "evil.pt")
    assert not marker.exists()


def test_output_logits_and_both(model_file, pinned):
    path, ref = model_file
    full = torch.load(path, map_location="cpu", weights_only=False).eval()  # the test's own file: the classifier
    x = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    lg = create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1&output=logits")
    both = create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1&output=both")
    assert (lg.dim, both.dim) == (10, 1290) and lg.key == "hsemotion_enet_b0_8_va_mtl_output_logits"
    with torch.no_grad():
        torch.testing.assert_close(lg(x), full(lg.preprocess(x)))
        torch.testing.assert_close(both(x), torch.cat([ref(both.preprocess(x)), full(both.preprocess(x))], -1))
    with pytest.raises(AbawError, match="output='probs'"):
        create_backbone("hsemotion:enet_b0_8_va_mtl?trust_pickle=1&output=probs")
