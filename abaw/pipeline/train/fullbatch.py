"""Full-batch L-BFGS for the `linear` head (`solver="lbfgs"`): the probe fitted to convergence.

The linear head is a convex problem per task (EXPR: weighted softmax regression, AU:
weighted logistic regression per AU; VA: tanh-linear under 1 - CCC, smooth and nearly
convex). Mini-batch AdamW with early stopping leaves it short of its optimum; this fits
each task's layer on *every* training frame at once with L-BFGS and an L2 penalty on the
weights (not the bias) as scikit-learn's `C` spells it:

    task loss (the training config's, class / positive weights included) + ||W_t||^2 / (2 C N_t K_t)

with N_t the task's labelled training frames and K_t the outputs its loss averages over (12
AUs, 2 VA dimensions, 1 for the softmax): each output's layer then sits at scikit-learn's
optimum for the same C (`lbfgs_c`, default 0.1; tested against LogisticRegression). No epochs, no
early stopping, no dropout (the features are standardised once, in eval mode): one
deterministic fit, recorded as the run's single epoch, so checkpoints, validation,
post-processing, the honest estimate and resuming work as for any run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from abaw.heads.losses import MultiTaskLoss
from abaw.pipeline.train.dataset import Batcher, FrameSet

LBFGS_HISTORY = 20


def fit_full_batch(model: nn.Module, loss_fn: MultiTaskLoss, fs: FrameSet, batcher: Batcher, *, c: float,
                   max_iter: int) -> dict[str, Any]:
    """Fit each task layer of `model` (a `LinearModel`) on all positions of `fs`; the epoch record."""
    t_start = time.perf_counter()
    model.eval()  # standardisation only: no dropout in a convex fit
    batch = batcher(np.arange(len(fs), dtype=np.int64)[:, None])  # every frame, one position per "window"
    with torch.no_grad():
        h = model.embed(batch["feats"], batch["mask"])
    parts: dict[str, float] = {}
    info: dict[str, Any] = {}
    for t in loss_fn.tasks:
        head = model.heads[t]
        n = int(batch[f"{t}_valid"].sum())
        if n == 0:
            continue
        lam = 1.0 / (2.0 * c * n * _columns(loss_fn, t, head))
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=LBFGS_HISTORY,
                                tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure(t=t, head=head, lam=lam, opt=opt) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn.task_loss(t, model.apply_heads({t: h}), batch) + lam * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            parts[t] = float(loss_fn.task_loss(t, model.apply_heads({t: h}), batch))
        info[t] = {"iterations": int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0)),
                   "frames": n, "l2": lam}
    total = sum(loss_fn.weights[t] * v for t, v in parts.items())
    secs = time.perf_counter() - t_start
    return {"epoch": 1, "lr": 0.0, "train_loss": total, **{f"train_loss_{t}": v for t, v in parts.items()},
            "batches": 1, "windows": len(fs), "frames": len(fs), "lbfgs": info,
            "time": {"train_s": secs, "data_s": 0.0, "fwd_bwd_s": secs, "opt_s": 0.0}}


def _columns(loss_fn: MultiTaskLoss, task: str, head: nn.Linear) -> int:
    """How many outputs the task loss averages over (the penalty is scaled to match, per output)."""
    if task == "au":
        return head.out_features
    if task == "va" and loss_fn.va_scale == "mean":
        return len(loss_fn.va_cols)
    return 1
