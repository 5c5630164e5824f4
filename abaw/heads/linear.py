"""The `linear` head architecture: the HSEmotion recipe on frozen features.

    feats_k [B, W, D_k] --standardise (training mean/std, buffers)--> concat [B, W, sum D_k]
    -> dropout -> one Linear per task: va -> 2 (tanh), expr -> 8 logits, au -> 12 logits

No fusion and no temporal context (each frame on its own; temporal smoothing is left to
post-processing). The losses are the usual ones from the training config: inverse-frequency
EXPR class weights (`expr_class_weight=inverse`) and weighted BCE for the AUs
(`au_pos_weight=auto`). Same forward signature and outputs as `MultiTaskModel`, so training,
prediction and checkpoints work unchanged; select it with `ModelSpec(arch="linear")`.
"""

from __future__ import annotations

import torch
from torch import nn

from abaw.heads.model import HEAD_MODELS, FeatureNorm, HeadModel, ModelSpec


@HEAD_MODELS.register("linear")
class LinearModel(HeadModel):
    """Standardised concatenated features -> a linear layer per task."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.norms = nn.ModuleList([FeatureNorm(d) for d in spec.dims])
        self.dropout = nn.Dropout(spec.dropout)
        self.heads = self.make_heads(sum(spec.dims))

    def set_feature_stats(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-backbone (mean, std) of the training features."""
        for norm, (m, s) in zip(self.norms, stats):
            norm.set_stats(m, s)

    def embed(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The standardised, concatenated features [B, W, sum D_k] (`mask` is unused: no context)."""
        if len(feats) != len(self.norms):
            raise ValueError(f"expected {len(self.norms)} feature tensors, got {len(feats)}")
        return self.dropout(torch.cat([n(x.float()) for n, x in zip(self.norms, feats)], dim=-1))
