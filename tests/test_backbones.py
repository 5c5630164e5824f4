"""Backbone specs, the registry, preprocessing, weights loading and fingerprints."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from abaw.errors import AbawError
from abaw.extract.backbones import (
    FACE_MEAN,
    Preprocess,
    create_backbone,
    load_state_dict_file,
    parse_spec,
    same_features,
    spec_key,
)

TINY = "timm:test_efficientnet_gn?size=64&pretrained=0"


def test_parse_spec_and_key():
    assert parse_spec("timm:vit_base_patch16_224.mae") == ("timm", "vit_base_patch16_224.mae", {})
    assert parse_spec("timm:x?size=112&norm=face") == ("timm", "x", {"size": "112", "norm": "face"})
    assert spec_key("timm:x?size=112&norm=face") == "timm_x_size_112_norm_face"
    assert spec_key("timm:x?key=mine") == "mine"
    with pytest.raises(AbawError, match="family:name"):
        parse_spec("resnet50")
    with pytest.raises(AbawError, match="unknown backbone family 'nope'"):
        create_backbone("nope:x")
    with pytest.raises(AbawError, match="timm has no model"):
        create_backbone("timm:not_a_model?pretrained=0")


def test_random_init_is_reproducible_and_fingerprinted():
    a, b = create_backbone(TINY), create_backbone(TINY)
    assert a.weights_sha256 == b.weights_sha256
    x = torch.randint(0, 256, (3, 112, 112, 3), dtype=torch.uint8)
    torch.testing.assert_close(a(x), b(x))
    assert a(x).shape == (3, a.dim)
    fp = a.fingerprint()
    assert fp["preprocess"]["input_size"] == 64 and fp["source"] == {"pretrained": False}
    assert same_features(fp, b.fingerprint())
    c = create_backbone(TINY + "&norm=face")
    assert c.preprocess.mean == FACE_MEAN and not same_features(fp, c.fingerprint())


def test_preprocess_resize_normalise_bgr():
    p = Preprocess(input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    x[..., 0] = 255
    y = p(x)
    assert y.shape == (2, 3, 8, 8)
    assert torch.allclose(y[:, 0], torch.ones(1)) and torch.allclose(y[:, 2], -torch.ones(1))
    yb = Preprocess(input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, channel_order="BGR")(x)
    assert torch.allclose(yb[:, 2], torch.ones(1))
    with pytest.raises(ValueError):
        p(torch.zeros(2, 3, 16, 16))


def test_weights_files(tmp_path):
    a = create_backbone(TINY)
    sd = {k: v + 1.0 if v.is_floating_point() else v for k, v in a.model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pt")
    b = create_backbone(f"timm:test_efficientnet_gn?size=64&weights={tmp_path / 'w.safetensors'}")
    c = create_backbone(f"timm:test_efficientnet_gn?size=64&weights={tmp_path / 'w.pt'}")
    assert b.weights_sha256 == c.weights_sha256 != a.weights_sha256
    assert len(b.fingerprint()["source"]["weights_file_sha256"]) == 64
    with pytest.raises(AbawError, match="either weights= or pretrained=1"):
        create_backbone(f"timm:test_efficientnet_gn?pretrained=1&weights={tmp_path / 'w.pt'}")


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_need_explicit_trust(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(AbawError, match="trust_pickle"):
        load_state_dict_file(p)
    with pytest.raises(AbawError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_same_features_survives_a_json_round_trip():
    import json

    fp = create_backbone(TINY).fingerprint()
    assert same_features(json.loads(json.dumps(fp)), fp)
