"""Feature Fusion Modules: combine the per-backbone projections of a frame into one vector.

Every module maps a list of K tensors `[B, W, d]` (one per backbone, already projected to
the model width `d`) to one tensor `[B, W, d]`. Registered names:

- `sum`:       sum of the projections, then a residual MLP (the ABAW7 winner's FFM).
- `concat`:    concatenation, a linear layer back to `d`, then the residual MLP.
- `attention`: per-frame learned weights across the backbones (softmax over K of a small
               scoring network), weighted sum, then the residual MLP.
- `ffm`:       the ABAW7 winner's Feature Fusion Module exactly: the features summed at
               their native width (no learned per-backbone projection, so every backbone
               must have the same width), then Linear-ReLU-Dropout(0.3)-Linear and
               LeakyReLU(0.1). A module with `native_width = True` gets the standardised
               features instead of the projections; the model maps its output to `d_model`
               afterwards when the widths differ (the winner's transformer `pre_linear`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from abaw.registry import Registry

FusionFactory = Callable[[int, int, float], nn.Module]
FUSIONS: Registry[FusionFactory] = Registry("fusion module")


class ResidualMLP(nn.Module):
    """`x + MLP(LayerNorm(x))` with a 2x hidden layer."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(nn.functional.gelu(self.fc1(self.norm(x))))))


class SumFusion(nn.Module):
    def __init__(self, n_inputs: int, d: int, dropout: float):
        super().__init__()
        self.n_inputs = n_inputs
        self.mlp = ResidualMLP(d, dropout)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        h = xs[0]
        for x in xs[1:]:
            h = h + x
        return self.mlp(h)


class ConcatFusion(nn.Module):
    def __init__(self, n_inputs: int, d: int, dropout: float):
        super().__init__()
        self.n_inputs = n_inputs
        self.reduce = nn.Linear(n_inputs * d, d)
        self.mlp = ResidualMLP(d, dropout)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.reduce(torch.cat(xs, dim=-1)))


class AttentionFusion(nn.Module):
    """Weights across backbones computed per frame: a_k = softmax_k(v . tanh(U x_k))."""

    def __init__(self, n_inputs: int, d: int, dropout: float):
        super().__init__()
        self.n_inputs = n_inputs
        hidden = max(8, d // 4)
        self.score = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.mlp = ResidualMLP(d, dropout)
        self.last_weights: torch.Tensor | None = None  # [B, W, K] of the last forward (for inspection)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(xs, dim=-2)  # [B, W, K, d]
        a = torch.softmax(self.score(x).squeeze(-1), dim=-1)  # [B, W, K]
        self.last_weights = a.detach()
        return self.mlp((a.unsqueeze(-1) * x).sum(-2))


class WinnerFFM(nn.Module):
    """sum_k x_k -> Linear-ReLU-Dropout(0.3)-Linear -> LeakyReLU(0.1), at the features' own width."""

    native_width = True

    def __init__(self, n_inputs: int, d: int, dropout: float):
        super().__init__()
        self.n_inputs = n_inputs
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.3), nn.Linear(d, d))
        self.act = nn.LeakyReLU(0.1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        h = xs[0]
        for x in xs[1:]:
            h = h + x
        return self.act(self.mlp(h))


FUSIONS.register("sum")(SumFusion)
FUSIONS.register("concat")(ConcatFusion)
FUSIONS.register("attention")(AttentionFusion)
FUSIONS.register("ffm")(WinnerFFM)


def native_width(name: str) -> bool:
    """Whether fusion `name` takes the features at their own width (no projection)."""
    return bool(getattr(FUSIONS.get(name), "native_width", False))


def create_fusion(name: str, n_inputs: int, d: int, dropout: float = 0.0) -> nn.Module:
    """Build a registered fusion module for `n_inputs` projected inputs of width `d`."""
    return FUSIONS.get(name)(n_inputs, d, dropout)
