"""Backbone specs, the registry, preprocessing, weights loading, fingerprints, and the contract
every registered backbone family meets."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from safetensors.torch import save_file

from abaw.errors import AbawError
from abaw.extract.backbones import (
    BACKBONES,
    FACE_MEAN,
    Backbone,
    Preprocess,
    create_backbone,
    load_state_dict_file,
    parse_spec,
    same_features,
    spec_key,
    validate_spec,
)
from abaw.fingerprint import file_sha256

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


# ---------------------------------------------------------------------------- contract of every family
# Like timm's tests/test_models.py: every registered family builds from a tiny offline spec,
# declares its options, rejects unknown ones naming the known ones, gives [B, dim] float
# features for a uint8 batch, is frozen and fingerprinted.

TINY_ARCH = "test_efficientnet_gn"


def _tiny_hsemotion(tmp_path) -> str:
    import timm

    torch.manual_seed(0)
    p = tmp_path / "hs.pt"
    torch.save(timm.create_model(TINY_ARCH, pretrained=False, num_classes=0).state_dict(), p)
    return f"hsemotion:mine?file={p}&arch={TINY_ARCH}&sha256={file_sha256(p)}&size=32"


def _tiny_ckpt(tmp_path) -> str:
    import timm

    from abaw.extract.backbones.ckpt import write_checkpoint

    torch.manual_seed(0)
    m = timm.create_model(TINY_ARCH, pretrained=False, num_classes=0)
    head = torch.nn.Linear(m.num_features, 8)
    write_checkpoint(tmp_path / "ck", m.state_dict(), head.state_dict(), timm_model=TINY_ARCH, model_kwargs={},
                     dim=int(m.num_features), preprocess=Preprocess(input_size=32), task="expr", head={}, extra={})
    return f"ckpt:{tmp_path / 'ck'}"


# families whose tiny spec needs a file: made here (the others declare `example=` when registering)
MAKE_SPEC = {"hsemotion": _tiny_hsemotion, "ckpt": _tiny_ckpt}
FAMILIES = BACKBONES.names()


def _tiny_spec(family: str, tmp_path) -> str:
    fam = BACKBONES.get(family)
    if fam.example:
        return fam.example
    assert family in MAKE_SPEC, f"backbone family {family!r}: give register_backbone an example= spec " \
                                "(or a maker in MAKE_SPEC) for the contract tests"
    return MAKE_SPEC[family](tmp_path)


def _with(spec: str, opt: str) -> str:
    return spec + ("&" if "?" in spec else "?") + opt


def test_every_family_is_covered():
    assert {"timm", "hsemotion", "ckpt", "mtcnn"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_declares_its_options(family):
    fam = BACKBONES.get(family)
    assert fam.options is not None, f"{family}: declare the options in register_backbone(..., options=)"
    names = [o.name for o in fam.options]
    assert "key" in names and len(names) == len(set(names))
    for o in fam.options:
        assert o.type in ("str", "int", "bool", "choice") and o.help, o
        assert (o.type == "choice") == bool(o.choices), o
        if o.default is not None and o.type != "str":
            assert o.parse(str(o.default)) == o.default, o


@pytest.mark.parametrize("family", FAMILIES)
def test_family_rejects_unknown_and_bad_options_before_building(family, tmp_path, monkeypatch):
    fam = BACKBONES.get(family)
    spec = _tiny_spec(family, tmp_path)
    monkeypatch.setitem(BACKBONES._items, family, dataclasses.replace(fam, factory=_never))
    for bad in (_with(spec, "sizee=64"), _with(spec, "key=x&Key=y")):
        with pytest.raises(AbawError, match=r"unknown options \[") as e:
            create_backbone(bad)
        assert all(n in str(e.value) for n in fam.option_names()), str(e.value)
        with pytest.raises(AbawError, match="unknown options"):
            parse_spec(bad)
    for o in fam.options:
        if o.type in ("int", "bool", "choice"):
            with pytest.raises(AbawError, match=f"option {o.name}='@'"):
                validate_spec(_with(spec, f"{o.name}=@"))


def _never(*a, **k):
    raise AssertionError("the factory ran for a spec that should have been refused")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_contract(family, tmp_path):
    spec = _tiny_spec(family, tmp_path)
    bb = create_backbone(spec)
    assert isinstance(bb, Backbone) and bb.key == spec_key(bb.spec) and bb.dim > 0
    x = torch.randint(0, 256, (3, 40, 40, 3), dtype=torch.uint8)
    y = bb(x)
    assert y.shape == (3, bb.dim) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not bb.model.training and not any(p.requires_grad for p in bb.model.parameters())
    fp = bb.fingerprint()
    assert {"spec", "key", "dim", "preprocess", "weights_sha256", "source", "versions"} <= set(fp)
    assert len(fp["weights_sha256"]) == 64 and fp["dim"] == bb.dim
    assert same_features(fp, create_backbone(spec).fingerprint())  # reproducible
    assert create_backbone(_with(spec, "key=mine")).key == "mine"


def test_typo_is_refused_before_the_hub(monkeypatch):
    """`sizee=64` without pretrained=0 used to retry the hub for ~50 s and blame the network."""
    import timm

    monkeypatch.setattr(timm, "create_model", _never)
    with pytest.raises(AbawError, match=r"unknown options \['sizee'\] .*known: .*pretrained, size"):
        create_backbone("timm:resnet18?sizee=64")
    with pytest.raises(AbawError, match="option size='abc': expected an integer"):
        create_backbone("timm:resnet18?size=abc&pretrained=0")
    with pytest.raises(AbawError, match="option pretrained='maybe'"):
        create_backbone("timm:resnet18?pretrained=maybe")
