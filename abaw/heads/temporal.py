"""Temporal Convergence Modules: context across the frames of a window.

Every module maps `x [B, W, d]` and `mask [B, W]` (bool, True = a real frame, False =
padding) to `[B, W, d]`. Outputs at real frames never depend on what the padded positions
hold. Registered names:

- `none`:        no temporal context (each frame on its own).
- `transformer`: sinusoidal positions + pre-norm Transformer encoder with a key-padding
                 mask (causal: each frame attends only to itself and earlier frames;
                 `posenc=False`: no position codes, as the ABAW7 winner's transformer).
- `tcn`:         residual blocks of dilated Conv1d (dilation 1, 2, 4, ...), padded frames
                 zeroed before every convolution (causal: left padding only, so frame t
                 sees frames <= t).
- `gru`, `lstm`: recurrent layers over packed sequences (bidirectional unless causal),
                 projected back to `d` with a residual connection. Masks must be a valid
                 prefix followed by padding (the windows built by `abaw.pipeline.train.dataset`).
                 `causal=True` is the unidirectional LSTM/GRU the ABAW7 winner used.

`run_chunked(module, x, mask, n)` runs a module over consecutive chunks of `n` frames of
each window separately (the winner's per-task windows: AU 1, EXPR 5, VA 30 frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from abaw.registry import Registry


@dataclass(frozen=True)
class TemporalOptions:
    """Hyper-parameters shared by the temporal modules (each uses the ones it needs)."""

    layers: int = 2
    heads: int = 4  # transformer
    ff_mult: int = 2  # transformer feed-forward width = ff_mult * d
    kernel: int = 3  # tcn
    causal: bool = False
    dropout: float = 0.1
    posenc: bool = True  # transformer: add sinusoidal position codes


TemporalFactory = Callable[[int, TemporalOptions], nn.Module]
TEMPORALS: Registry[TemporalFactory] = Registry("temporal module")


def create_temporal(name: str, d: int, opts: TemporalOptions | None = None) -> nn.Module:
    """Build a registered temporal module of width `d`."""
    return TEMPORALS.get(name)(d, opts or TemporalOptions())


def _prefix_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Lengths of prefix masks; ValueError if a mask is not `True...True False...False`."""
    lengths = mask.sum(1)
    expect = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(expect, mask):
        raise ValueError("recurrent temporal modules need masks of the form valid-prefix + padding")
    if (lengths == 0).any():
        raise ValueError("a window without any valid frame")
    return lengths


@TEMPORALS.register("none")
class NoTemporal(nn.Module):
    def __init__(self, d: int, opts: TemporalOptions):
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


def sinusoidal_positions(n: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[n, d] sine/cosine position codes (Vaswani et al.)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, device=device, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * i / d)
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe.to(dtype)


@TEMPORALS.register("transformer")
class TransformerTemporal(nn.Module):
    def __init__(self, d: int, opts: TemporalOptions):
        super().__init__()
        if d % opts.heads:
            raise ValueError(f"transformer: width {d} is not divisible by {opts.heads} heads")
        self.causal = opts.causal
        self.posenc = opts.posenc
        layer = nn.TransformerEncoderLayer(d, opts.heads, opts.ff_mult * d, opts.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, opts.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(opts.dropout)
        self._pe: torch.Tensor | None = None

    def _positions(self, n: int, x: torch.Tensor) -> torch.Tensor:
        if self._pe is None or self._pe.shape[0] < n or self._pe.device != x.device:
            self._pe = sinusoidal_positions(max(n, 64), x.shape[-1], x.device)
        return self._pe[:n].to(x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.drop(x + self._positions(n, x) if self.posenc else x)
        attn_mask = None
        if self.causal:
            attn_mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)  # True = blocked
        h = self.encoder(h, mask=attn_mask, src_key_padding_mask=~mask, is_causal=False)
        return self.norm(h)


class _TCNBlock(nn.Module):
    def __init__(self, d: int, kernel: int, dilation: int, causal: bool, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, kernel, dilation=dilation)
        self.pw = nn.Conv1d(d, d, 1)
        self.drop = nn.Dropout(dropout)
        total = (kernel - 1) * dilation
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = (self.norm(h) * m).transpose(1, 2)  # [B, d, W], padding zeroed
        y = self.pw(F.gelu(self.conv(F.pad(y, self.pad))))
        return h + self.drop(y.transpose(1, 2))


@TEMPORALS.register("tcn")
class TCNTemporal(nn.Module):
    def __init__(self, d: int, opts: TemporalOptions):
        super().__init__()
        self.blocks = nn.ModuleList(
            [_TCNBlock(d, opts.kernel, 2 ** i, opts.causal, opts.dropout) for i in range(opts.layers)])
        self.norm = nn.LayerNorm(d)

    def receptive_field(self) -> int:
        return 1 + sum((b.conv.kernel_size[0] - 1) * b.conv.dilation[0] for b in self.blocks)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        h = x * m
        for b in self.blocks:
            h = b(h, m)
        return self.norm(h)


class _RNNTemporal(nn.Module):
    cell: type[nn.RNNBase] = nn.GRU

    def __init__(self, d: int, opts: TemporalOptions):
        super().__init__()
        bidir = not opts.causal
        hidden = d // 2 if bidir else d
        self.norm_in = nn.LayerNorm(d)
        self.rnn = self.cell(d, hidden, num_layers=opts.layers, batch_first=True, bidirectional=bidir,
                             dropout=opts.dropout if opts.layers > 1 else 0.0)
        self.proj = nn.Linear(hidden * (2 if bidir else 1), d)
        self.drop = nn.Dropout(opts.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = _prefix_lengths(mask)
        h = self.norm_in(x)
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.norm(x + self.drop(self.proj(out)))


@TEMPORALS.register("gru")
class GRUTemporal(_RNNTemporal):
    cell = nn.GRU


@TEMPORALS.register("lstm")
class LSTMTemporal(_RNNTemporal):
    cell = nn.LSTM


def run_chunked(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """`module(x, mask)` over consecutive chunks of `n` frames of each window (no context
    across chunks; the last chunk is shorter, padded and masked). Chunks without a real
    frame are skipped and give zeros. `n <= 0` or `n >= W`: the whole window at once."""
    b, w, d = x.shape
    if n <= 0 or n >= w:
        return module(x, mask)
    k = -(-w // n)
    pad = k * n - w
    xc = F.pad(x, (0, 0, 0, pad)).reshape(b * k, n, d)
    mc = F.pad(mask, (0, pad), value=False).reshape(b * k, n)
    keep = mc.any(1)
    out = xc.new_zeros(xc.shape)
    if keep.any():
        out[keep] = module(xc[keep], mc[keep]).to(out.dtype)
    return out.reshape(b, k * n, d)[:, :w]
