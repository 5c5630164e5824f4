"""The three fine-tuning tasks: targets, loss, predictions and validation metric.

- `va`:   2 outputs through tanh, loss 1 - mean CCC(valence, arousal); metric P_VA.
- `expr`: 8 logits, cross-entropy (optional label smoothing / inverse-frequency class weights);
          metric P_EXPR (macro F1 over all 8 classes).
- `au`:   12 logits, binary cross-entropy (optionally positives weighted by the
          negative/positive ratio of each AU, capped at 10); prediction = sigmoid > 0.5; metric P_AU
          (mean binary F1 over the 12 AUs).

Every loss ignores rows whose label is invalid for the task (masks from the annotation
codes), and metrics come from `abaw.metrics`, the same code that scores submissions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from abaw.data.annotations import Annotations
from abaw.data.labels import (
    AU_INVALID,
    AU_NAMES,
    EXPR_INVALID,
    EXPR_NAMES,
    N_AU,
    N_EXPR,
    VA_INVALID,
)
from abaw.heads.losses import va_loss, zero_loss
from abaw.metrics import ccc, per_au_f1, per_class_f1
from abaw.registry import Registry


class Task:
    """One task's head size, loss and metric."""

    name = ""
    out_dim = 0
    output = ""  # activation applied to the head's outputs at prediction time
    metric_name = ""

    def targets(self, ann: Annotations) -> np.ndarray:
        raise NotImplementedError

    def valid(self, ann: Annotations) -> np.ndarray:
        return ann.valid(self.name)

    def setup(self, train_targets: np.ndarray, cfg: Any) -> None:
        """Fix training-set dependent settings (e.g. class weights)."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, out: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
        """(metric, details) of raw head outputs against targets (invalid rows ignored)."""
        raise NotImplementedError

    def to(self, device: torch.device) -> Task:
        return self


FINETUNE_TASKS: Registry[type[Task]] = Registry("fine-tuning task")


@FINETUNE_TASKS.register("va")
class VATask(Task):
    name, out_dim, output, metric_name = "va", 2, "tanh", "P_VA (mean CCC)"

    def targets(self, ann: Annotations) -> np.ndarray:
        return ann.va.astype(np.float32)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = (y != VA_INVALID).all(1)
        if int(m.sum()) < 2:
            return zero_loss(out)
        return va_loss(torch.tanh(out), y, m)

    def predict(self, out: np.ndarray) -> np.ndarray:
        return np.tanh(out)

    def score(self, out: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
        m = (y != VA_INVALID).all(1)
        p = self.predict(out)[m]
        v, a = ccc(p[:, 0], y[m, 0]), ccc(p[:, 1], y[m, 1])
        return (v + a) / 2, {"valence": v, "arousal": a}


@FINETUNE_TASKS.register("expr")
class ExprTask(Task):
    name, out_dim, output, metric_name = "expr", N_EXPR, "softmax", "P_EXPR (macro F1, 8 classes)"

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None
        self.smoothing = 0.0

    def targets(self, ann: Annotations) -> np.ndarray:
        return ann.expr.astype(np.int64)

    def setup(self, train_targets: np.ndarray, cfg: Any) -> None:
        self.smoothing = float(cfg.label_smoothing)
        if cfg.class_weights == "balanced":
            y = train_targets[train_targets != EXPR_INVALID]
            counts = np.bincount(y, minlength=N_EXPR).astype(np.float64)
            w = np.divide(len(y), N_EXPR * counts, out=np.zeros(N_EXPR), where=counts > 0)
            self.weight = torch.tensor(w, dtype=torch.float32)

    def to(self, device: torch.device) -> ExprTask:
        if self.weight is not None:
            self.weight = self.weight.to(device)
        return self

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = y != EXPR_INVALID
        if not bool(m.any()):
            return zero_loss(out)
        return F.cross_entropy(out[m], y[m], weight=self.weight, label_smoothing=self.smoothing)

    def predict(self, out: np.ndarray) -> np.ndarray:
        return out.argmax(1)

    def score(self, out: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
        m = y != EXPR_INVALID
        f1 = per_class_f1(y[m], self.predict(out)[m], N_EXPR)
        return float(f1.mean()), dict(zip(EXPR_NAMES, map(float, f1)))


@FINETUNE_TASKS.register("au")
class AUTask(Task):
    name, out_dim, output, metric_name = "au", N_AU, "sigmoid", "P_AU (mean binary F1, 12 AUs)"

    max_pos_weight = 10.0

    def __init__(self) -> None:
        self.pos_weight: torch.Tensor | None = None

    def targets(self, ann: Annotations) -> np.ndarray:
        return ann.au.astype(np.float32)

    def setup(self, train_targets: np.ndarray, cfg: Any) -> None:
        if cfg.class_weights == "balanced":  # positives weighted by negatives/positives, capped
            y = train_targets[train_targets[:, 0] != AU_INVALID]
            pos = y.sum(0).astype(np.float64)
            w = np.divide(len(y) - pos, pos, out=np.full(N_AU, self.max_pos_weight), where=pos > 0)
            self.pos_weight = torch.tensor(np.clip(w, 1.0, self.max_pos_weight), dtype=torch.float32)

    def to(self, device: torch.device) -> AUTask:
        if self.pos_weight is not None:
            self.pos_weight = self.pos_weight.to(device)
        return self

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = y[:, 0] != AU_INVALID
        if not bool(m.any()):
            return zero_loss(out)
        return F.binary_cross_entropy_with_logits(out[m], y[m], pos_weight=self.pos_weight)

    def predict(self, out: np.ndarray) -> np.ndarray:
        return (out > 0).astype(np.int8)  # sigmoid > 0.5

    def score(self, out: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
        m = y[:, 0] != AU_INVALID
        f1 = per_au_f1(y[m].astype(np.int8), self.predict(out)[m])
        return float(f1.mean()), dict(zip(AU_NAMES, map(float, f1)))


def create_task(name: str) -> Task:
    return FINETUNE_TASKS.get(name)()
