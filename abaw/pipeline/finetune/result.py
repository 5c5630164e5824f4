"""`FinetuneResult`: what `abaw finetune` reports (also kept in state.pt and history.json)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from abaw.results import Result


@dataclass(frozen=True)
class FinetuneResult(Result):
    task: str
    metric_name: str
    out: str
    untrained_metric: float
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    stopped_early: bool
    done: bool
    history: tuple[dict[str, Any], ...]
    layer_decay: float = 1.0
    amp_bf16: bool = False
    channels_last: bool = False
    processes: int = 1
    device: str = "cpu"
    steps_per_epoch: int = 0
    train_frames: int = 0
    val_frames: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "history" else v) for k, v in d.items() if k in names})

    def format(self) -> str:
        lines = []
        for h in self.history:
            loss = "untrained" if h["train_loss"] is None else f"train loss {h['train_loss']:.4f}"
            lines.append(f"epoch {h['epoch']:>3}  {loss:<20}  val {h['val_metric']:.4f}"
                         + ("  *" if h["epoch"] == self.best_epoch else ""))
        how = "stopped early" if self.stopped_early else "finished"
        best = "n/a" if self.best_metric is None else f"{self.best_metric:.4f}"
        lines.append(f"{how} after epoch {self.epochs_run}: best {self.metric_name} {best} "
                     f"(epoch {self.best_epoch}; untrained {self.untrained_metric:.4f})")
        lines.append(f"checkpoint: {self.out}  ->  abaw extract --backbone ckpt:{self.out}")
        return "\n".join(lines)

    @property
    def warnings(self) -> tuple[str, ...]:
        if self.best_metric is not None and self.best_metric <= self.untrained_metric:
            return ("warning: no epoch beat the untrained model on validation; check --lr and the data",)
        return ()
