"""`timm:` ViTs as face-affect projects save them: `pool=avg|token` and checkpoint layouts
(`module.model.`, `model.`, MAE pre-training with decoder weights, `norm` vs `fc_norm`).
Every checkpoint is written by the test itself from a tiny random ViT (timm `test_vit`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from abaw.errors import AbawError
from abaw.extract.backbones import create_backbone

ARCH = "test_vit"


def _vit(pool: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(1)
    m = timm.create_model(ARCH, pretrained=False, num_classes=0, global_pool=pool)
    with torch.no_grad():  # non-trivial norms, so a wrongly loaded norm would show
        for k, p in m.named_parameters():
            if "norm" in k:
                p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _frames() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 40, 40, 3), dtype=torch.uint8, generator=g)


def _features(model: torch.nn.Module, backbone) -> torch.Tensor:
    with torch.no_grad():
        return model(backbone.preprocess(_frames()))


def test_pool_avg_is_mean_of_patch_tokens_then_fc_norm():
    b = create_backbone(f"timm:{ARCH}?pretrained=0&pool=avg")
    m = b.model
    x = b.preprocess(_frames())
    with torch.no_grad():
        tokens = m.forward_features(x)  # [B, 1 + patches, d]; final norm is Identity under avg pooling
        expect = m.fc_norm(tokens[:, m.num_prefix_tokens:].mean(1))
    assert isinstance(m.norm, torch.nn.Identity) and not isinstance(m.fc_norm, torch.nn.Identity)
    assert torch.allclose(b(_frames()), expect, atol=1e-5)
    t = create_backbone(f"timm:{ARCH}?pretrained=0&pool=token")
    assert isinstance(t.model.fc_norm, torch.nn.Identity) and t.key != b.key


def test_winner_layout_module_model_prefix(tmp_path):
    ref = _vit("avg")
    sd = {f"module.model.{k}": v for k, v in ref.state_dict().items()}
    sd["module.AUhead.0.weight"] = torch.zeros(12, 64)  # the joint model's task heads: not the backbone
    sd["module.AUhead.0.bias"] = torch.zeros(12)
    torch.save(sd, tmp_path / "winner.pth")
    b = create_backbone(f"timm:{ARCH}?pool=avg&weights={tmp_path / 'winner.pth'}")
    assert torch.allclose(b(_frames()), _features(ref, b), atol=1e-5)
    layout = b.fingerprint()["source"]["weights_layout"]
    assert layout["prefix"] == "model."  # `module.` is stripped on reading
    assert layout["outside_prefix"] == ["AUhead.0.bias", "AUhead.0.weight"]
    assert b.fingerprint()["source"]["unexpected_keys"] == 2


def test_model_prefix_safetensors_and_plain_layout_unchanged(tmp_path):
    ref = _vit("token")
    save_file({f"model.{k}": v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "plain.safetensors")
    b = create_backbone(f"timm:{ARCH}?pool=token&weights={tmp_path / 'm.safetensors'}")
    p = create_backbone(f"timm:{ARCH}?pool=token&weights={tmp_path / 'plain.safetensors'}")
    assert torch.allclose(b(_frames()), _features(ref, b), atol=1e-5)
    assert b.weights_sha256 == p.weights_sha256
    assert b.fingerprint()["source"]["weights_layout"] == {"prefix": "model."}
    assert "weights_layout" not in p.fingerprint()["source"]  # the model's own layout: fingerprint as before


def test_mae_pretraining_checkpoint_drops_decoder_and_starts_fc_norm_at_identity(tmp_path):
    enc = _vit("token")  # MAE pre-training: final `norm`, no fc_norm
    sd = dict(enc.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 64)
    sd["decoder_embed.weight"] = torch.zeros(32, 64)
    sd["decoder_blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)
    sd["decoder_pred.weight"] = torch.zeros(768, 32)
    torch.save({"model": sd, "epoch": 399}, tmp_path / "mae_pretrain.pth")
    b = create_backbone(f"timm:{ARCH}?pool=avg&weights={tmp_path / 'mae_pretrain.pth'}")
    layout = b.fingerprint()["source"]["weights_layout"]
    assert layout["mae_decoder_dropped"] == 4
    assert layout["initialised"] == ["fc_norm.weight", "fc_norm.bias"]
    assert "norm.weight" in layout["unexpected"]
    assert torch.equal(b.model.fc_norm.weight, torch.ones(64)) and torch.equal(b.model.fc_norm.bias, torch.zeros(64))
    assert torch.equal(b.model.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    # the same checkpoint with the class token keeps the pre-trained norm
    t = create_backbone(f"timm:{ARCH}?pool=token&weights={tmp_path / 'mae_pretrain.pth'}")
    assert torch.allclose(t(_frames()), _features(enc, t), atol=1e-5)


def test_fc_norm_checkpoint_under_token_pooling_is_refused_with_a_hint(tmp_path):
    save_file({k: v.contiguous() for k, v in _vit("avg").state_dict().items()}, tmp_path / "avg.safetensors")
    with pytest.raises(AbawError, match=r"2 backbone weights missing: norm\.weight, norm\.bias .*add pool=avg"):
        create_backbone(f"timm:{ARCH}?pool=token&weights={tmp_path / 'avg.safetensors'}")


def test_missing_backbone_weights_are_named(tmp_path):
    sd = {f"module.model.{k}": v for k, v in _vit("avg").state_dict().items() if not k.startswith("blocks.0.attn")}
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(AbawError, match=r"broken\.pth: 4 backbone weights missing: blocks\.0\.attn\.qkv\.weight, "):
        create_backbone(f"timm:{ARCH}?pool=avg&weights={tmp_path / 'broken.pth'}")


def test_pool_option_is_checked():
    with pytest.raises(AbawError, match="pool='max'.*avg, token"):
        create_backbone(f"timm:{ARCH}?pretrained=0&pool=max")
    with pytest.raises(AbawError, match="does not support pool=token"):
        create_backbone("timm:test_efficientnet_gn?pretrained=0&pool=token")
