"""Task losses, each masked by its task's label validity, and their weighted sum.

- AU:   binary cross-entropy on the 12 logits (optional per-AU positive weights), averaged
        over valid frames x AUs.
- EXPR: cross-entropy on the 8 logits (optional class weights), weighted mean over valid
        frames.
- VA:   1 - CCC for valence and for arousal, each over all valid frames of the batch
        (population moments, as in `abaw.metrics.ccc`), averaged (`va_loss="mean"`), or
        summed (`va_loss="sum"`, the ABAW7 winner's scale: VA then weighs twice as much
        against EXPR and AU as with the mean, at equal task weights). A run that trains one
        dimension only (`va_dims`, `--tasks au,v`) has the loss of that dimension alone
        (mean and sum agree); the other output gets no gradient.

A task with no valid frame in the batch contributes an exact zero (connected to the
graph, so `backward()` works), never NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from abaw.data.labels import N_AU, N_EXPR, VA_DIMS

CCC_EPS = 1e-12  # same guard as abaw.metrics.ccc


def zero_loss(x: torch.Tensor) -> torch.Tensor:
    """An exact 0 connected to `x`'s graph (DDP needs every parameter to get a gradient)."""
    return (x * 0.0).sum()


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - CCC(pred, target) over all elements (population moments); 1 where CCC is undefined."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred = pred.to(dtype).reshape(-1)
    target = target.to(dtype).reshape(-1)
    if pred.numel() == 0:
        return zero_loss(pred)
    mp, mt = pred.mean(), target.mean()
    vp = (pred - mp).square().mean()
    vt = (target - mt).square().mean()
    cov = ((pred - mp) * (target - mt)).mean()
    den = vp + vt + (mp - mt).square()
    return 1.0 - 2.0 * cov / den.clamp_min(CCC_EPS)


VA_LOSS_SCALES = ("mean", "sum")


def va_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, scale: str = "mean",
            dims: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """Mean (`scale="sum"`: sum) of (1 - CCC) over the VA columns `dims` (0 valence, 1 arousal)
    on the valid frames; 0 if none."""
    v = valid.reshape(-1)
    p = pred.reshape(-1, 2)[v]
    t = target.reshape(-1, 2)[v]
    if p.shape[0] == 0:
        return zero_loss(pred)
    total = sum(ccc_loss(p[:, d], t[:, d]) for d in dims)
    return total if scale == "sum" else total / len(dims)


def expr_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) cross-entropy over the valid frames; 0 if none."""
    v = valid.reshape(-1)
    lg = logits.reshape(-1, N_EXPR)[v].float()
    t = target.reshape(-1)[v]
    if lg.shape[0] == 0:
        return zero_loss(logits)
    if class_weight is None:
        return F.cross_entropy(lg, t)
    w = class_weight[t]
    nll = F.cross_entropy(lg, t, reduction="none")
    return (w * nll).sum() / w.sum().clamp_min(CCC_EPS)


def au_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
            pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy over valid frames x 12 AUs; 0 if no valid frame."""
    v = valid.reshape(-1)
    lg = logits.reshape(-1, N_AU)[v].float()
    t = target.reshape(-1, N_AU)[v].float()
    if lg.shape[0] == 0:
        return zero_loss(logits)
    return F.binary_cross_entropy_with_logits(lg, t, pos_weight=pos_weight)


class MultiTaskLoss:
    """Weighted sum of the enabled tasks' masked losses.

    `outputs`: the model's dict (`va` after tanh, `expr`/`au` logits, [B, W, C]).
    `batch`:   targets `va` [B, W, 2], `expr` [B, W], `au` [B, W, 12] and validity masks
               `va_valid`, `expr_valid`, `au_valid` [B, W] (already AND-ed with the window mask).
    """

    def __init__(self, tasks: tuple[str, ...], weights: dict[str, float],
                 expr_class_weight: torch.Tensor | None = None, au_pos_weight: torch.Tensor | None = None,
                 va_scale: str = "mean", va_dims: tuple[str, ...] = VA_DIMS):
        if va_scale not in VA_LOSS_SCALES:
            raise ValueError(f"va_scale: one of {VA_LOSS_SCALES}, got {va_scale!r}")
        if not va_dims or any(d not in VA_DIMS for d in va_dims):
            raise ValueError(f"va_dims: some of {VA_DIMS}, got {va_dims!r}")
        self.va_scale = va_scale
        self.va_cols = tuple(VA_DIMS.index(d) for d in va_dims)
        self.tasks = tuple(t for t in tasks if weights.get(t, 1.0) != 0.0)
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.expr_class_weight = expr_class_weight
        self.au_pos_weight = au_pos_weight

    def to(self, device: torch.device | str) -> MultiTaskLoss:
        if self.expr_class_weight is not None:
            self.expr_class_weight = self.expr_class_weight.to(device)
        if self.au_pos_weight is not None:
            self.au_pos_weight = self.au_pos_weight.to(device)
        return self

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {t: self.task_loss(t, outputs, batch) for t in self.tasks}
        total = sum((self.weights[t] * parts[t] for t in parts), start=torch.zeros((), device=_device(outputs)))
        return total, parts


    def task_loss(self, task: str, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One task's masked loss (unweighted)."""
        if task == "va":
            return va_loss(outputs["va"], batch["va"], batch["va_valid"], self.va_scale, self.va_cols)
        if task == "expr":
            return expr_loss(outputs["expr"], batch["expr"], batch["expr_valid"], self.expr_class_weight)
        if task == "au":
            return au_loss(outputs["au"], batch["au"], batch["au_valid"], self.au_pos_weight)
        raise ValueError(f"unknown task {task!r}")


def _device(outputs: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(outputs.values())).device


def inverse_frequency_weights(expr: np.ndarray, n_classes: int = N_EXPR) -> np.ndarray:
    """Class weights N / (C * n_c), normalised to mean 1 over the classes that occur (0 for absent ones)."""
    counts = np.bincount(np.asarray(expr, dtype=np.int64), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    present = counts > 0
    if present.any():
        w[present] /= w[present].mean()
    return w.astype(np.float32)


def positive_weights(au: np.ndarray, max_weight: float = 20.0) -> np.ndarray:
    """Per-AU BCE positive weights: negatives / positives, clipped to [1, max_weight]."""
    au = np.asarray(au)
    pos = (au == 1).sum(0).astype(np.float64)
    neg = (au == 0).sum(0).astype(np.float64)
    return np.clip(neg / np.maximum(pos, 1.0), 1.0, max_weight).astype(np.float32)
