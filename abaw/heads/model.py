"""The multi-task head model: per-backbone projection -> fusion -> temporal -> task heads.

    feats_k [B, W, D_k] --standardise+Linear--> [B, W, d]  (one projection per backbone)
    fusion (sum | concat | attention)       -> [B, W, d]   (Feature Fusion Module)
      (fusion ffm: standardised features summed at their common width D, then Linear D -> d if D != d)
    temporal (none | transformer | tcn | gru | lstm) -> [B, W, d] (Temporal Convergence Module)
    heads: va -> 2 (tanh), expr -> 8 logits, au -> 12 logits (only the enabled tasks)

`ModelSpec` holds everything needed to rebuild the model (saved inside checkpoints).
Model architectures are registered in `HEAD_MODELS`; `multitask` is the one above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from abaw.data.labels import N_AU, N_EXPR, TASKS, VA_DIMS
from abaw.errors import AbawError
from abaw.heads.fusion import FUSIONS, create_fusion, native_width
from abaw.heads.temporal import TEMPORALS, TemporalOptions, create_temporal, run_chunked
from abaw.registry import Registry

TASK_OUTPUTS = {"va": 2, "expr": N_EXPR, "au": N_AU}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a head model (enough to rebuild it from a state dict)."""

    keys: tuple[str, ...] = ()  # backbone keys, in input order (filled from the cache when training)
    dims: tuple[int, ...] = ()  # feature width of each backbone
    tasks: tuple[str, ...] = TASKS
    fusion: str = "sum"
    temporal: str = "transformer"
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    ff_mult: int = 2
    kernel: int = 3
    causal: bool = False
    dropout: float = 0.1
    arch: str = "multitask"
    posenc: bool = True  # transformer: sinusoidal position codes (the ABAW7 winner: none)
    task_windows: tuple[int, int, int] = (0, 0, 0)  # va, expr, au: temporal context in chunks of N frames
    # of each window (0 = the whole window); the ABAW7 winner: va 30, expr 5, au 1
    snapshots: tuple[int, int, int] = (0, 0, 0)  # va, expr, au: which saved copy of the model predicts the
    # task (set by training when tasks peak at different epochs; not a training setting)
    va_dims: tuple[str, ...] = VA_DIMS  # the VA dimensions trained (`--tasks au,v`: valence only); the
    # head keeps its 2 outputs, an untrained one is predicted as NaN (set through `tasks`, see TrainConfig)

    def validate(self) -> ModelSpec:
        """Raise AbawError on an inconsistent architecture; return self."""
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise AbawError(f"tasks must be a non-empty subset of {','.join(TASKS)}; got {self.tasks}")
        FUSIONS.get(self.fusion)
        TEMPORALS.get(self.temporal)
        HEAD_MODELS.get(self.arch)
        checks = [(self.d_model >= 2 and self.d_model % 2 == 0, "d_model must be even and >= 2"),
                  (self.layers >= 1, "layers must be >= 1"), (self.heads >= 1, "heads must be >= 1"),
                  (self.temporal != "transformer" or self.d_model % self.heads == 0,
                   "d_model must be divisible by heads"),
                  (self.kernel >= 1, "kernel must be >= 1"), (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (len(self.keys) == len(self.dims), "one dim per backbone key"),
                  (len(self.task_windows) == 3 and all(int(n) >= 0 for n in self.task_windows),
                   "task_windows: three frame counts >= 0 (va, expr, au; 0 = the whole window)"),
                  (len(self.va_dims) > 0 and tuple(self.va_dims) == tuple(d for d in VA_DIMS if d in self.va_dims),
                   f"va_dims: some of {', '.join(VA_DIMS)}, in that order"),
                  (len(self.snapshots) == 3 and all(int(n) >= 0 for n in self.snapshots),
                   "snapshots: three copy indexes >= 0 (va, expr, au)")]
        for ok, msg in checks:
            if not ok:
                raise AbawError(f"model: {msg}")
        return self

    def task_copies(self) -> dict[str, int]:
        """Each enabled task -> the index of the model copy predicting it (`snapshots`)."""
        return {t: int(self.snapshots[TASKS.index(t)]) for t in self.tasks}

    def temporal_options(self) -> TemporalOptions:
        return TemporalOptions(layers=self.layers, heads=self.heads, ff_mult=self.ff_mult, kernel=self.kernel,
                               causal=self.causal, dropout=self.dropout, posenc=self.posenc)

    def windows(self) -> dict[str, int]:
        """The temporal chunk length of each enabled task (0 = the whole window)."""
        return {t: int(n) for t, n in zip(TASKS, self.task_windows) if t in self.tasks}


class FeatureNorm(nn.Module):
    """Fixed per-dimension standardisation of one backbone's features (statistics of the
    training frames, set once before training and saved with the weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


ModelFactory = Callable[[ModelSpec], nn.Module]
HEAD_MODELS: Registry[ModelFactory] = Registry("head model")


class HeadModel(nn.Module):
    """Base of the head architectures: checks the spec, owns the linear task heads and the
    forward pass (`embed` -> one linear layer per task, tanh on VA). Subclasses define
    `embed` and `set_feature_stats`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        if len(spec.keys) != len(spec.dims) or not spec.keys:
            raise ValueError("ModelSpec: one dim per backbone key, at least one backbone")
        unknown = [t for t in spec.tasks if t not in TASK_OUTPUTS]
        if unknown or not spec.tasks:
            raise ValueError(f"ModelSpec: tasks must be a non-empty subset of {TASKS}, got {spec.tasks}")
        self.spec = spec

    def make_heads(self, width: int) -> nn.ModuleDict:
        return nn.ModuleDict({t: nn.Linear(width, TASK_OUTPUTS[t]) for t in TASKS if t in self.spec.tasks})

    def embed(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame outputs: `va` in [-1, 1] [B, W, 2], `expr` / `au` logits [B, W, 8 / 12]."""
        return self.apply_heads(self.embed(feats, mask))

    def apply_heads(self, h: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task heads on one representation, or on one per task (`{task: [B, W, d]}`; tasks left
        out of the dict are not computed)."""
        if isinstance(h, dict):
            out = {t: head(h[t]) for t, head in self.heads.items() if t in h}
        else:
            out = {t: head(h) for t, head in self.heads.items()}
        if "va" in out:
            out["va"] = torch.tanh(out["va"])
        return out


@HEAD_MODELS.register("multitask")
class MultiTaskModel(HeadModel):
    """Projection + fusion + temporal module + linear task heads."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        d = spec.d_model
        self.resize: nn.Module = nn.Identity()
        if native_width(spec.fusion):
            if len(set(spec.dims)) != 1:
                widths = ", ".join(f"{k} {w}" for k, w in zip(spec.keys, spec.dims))
                raise AbawError(f"fusion {spec.fusion} sums the features at their own width, so every backbone "
                                f"must have the same width (got {widths}); use fusion sum, concat or attention")
            self.proj = nn.ModuleList([nn.Sequential(FeatureNorm(dim)) for dim in spec.dims])
            self.fusion = create_fusion(spec.fusion, len(spec.dims), spec.dims[0], spec.dropout)
            if spec.dims[0] != d:
                self.resize = nn.Linear(spec.dims[0], d)
        else:
            self.proj = nn.ModuleList(
                [nn.Sequential(FeatureNorm(dim), nn.Linear(dim, d), nn.Dropout(spec.dropout)) for dim in spec.dims])
            self.fusion = create_fusion(spec.fusion, len(spec.dims), d, spec.dropout)
        self.temporal = create_temporal(spec.temporal, d, spec.temporal_options())
        self.heads = self.make_heads(d)

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The per-frame fused features [B, W, d] (before temporal context)."""
        if len(feats) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} feature tensors, got {len(feats)}")
        return self.resize(self.fusion([p(x) for p, x in zip(self.proj, feats)]))

    def embed(self, feats: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The shared per-frame representation [B, W, d] after fusion and temporal context."""
        return self.temporal(self.fuse(feats), mask)

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """As `HeadModel.forward`; with `task_windows`, each task's head reads the temporal module
        run over chunks of its own length (one run per distinct length)."""
        windows = self.spec.windows()
        if not any(windows.values()):
            return super().forward(feats, mask)
        h = self.fuse(feats)
        by_len = {n: run_chunked(self.temporal, h, mask, n) for n in sorted(set(windows.values()))}
        return self.apply_heads({t: by_len[n] for t, n in windows.items()})

    def set_feature_stats(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-backbone (mean, std) of the training features, for the input standardisation."""
        for p, (m, s) in zip(self.proj, stats):
            p[0].set_stats(m, s)


class TaskSnapshots(nn.Module):
    """Copies of one architecture saved at different epochs; each task is predicted by its copy.

    Training keeps, per task, the weights of the epoch with that task's best validation
    score (`abaw.pipeline.train.loop`); when the tasks peak at different epochs the run's
    model is this: `spec.snapshots[i]` names the copy for task i (va, expr, au). The state
    dict is `copies.<n>.<name of the plain model>`; the forward pass runs each copy that
    some task needs and returns every task's output from its own copy.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        base = replace(spec, snapshots=(0, 0, 0))
        self.copies = nn.ModuleList([HEAD_MODELS.get(spec.arch)(base) for _ in range(n_snapshots(spec))])
        self.task_copy = spec.task_copies()

    @property
    def heads(self) -> dict[str, nn.Module]:
        """Each task's head (from its copy)."""
        return {t: self.copies[i].heads[t] for t, i in self.task_copy.items()}

    def forward(self, feats: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = {i: self.copies[i](feats, mask) for i in sorted(set(self.task_copy.values()))}
        return {t: outs[i][t] for t, i in self.task_copy.items()}


def n_snapshots(spec: ModelSpec) -> int:
    """How many copies a model of `spec` holds (1: a plain model)."""
    return 1 + max(int(n) for n in spec.snapshots)


def combine_snapshots(spec: ModelSpec, task_states: dict[str, dict[str, torch.Tensor]],
                      task_keys: dict[str, object]) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, state dict) of a model predicting each task from its own state dict.

    `task_keys[t]` identifies the state (e.g. its epoch): tasks with equal keys share one copy.
    One distinct state gives the plain model (spec.snapshots all 0).
    """
    order: list[object] = []
    for t in spec.tasks:
        if task_keys[t] not in order:
            order.append(task_keys[t])
    idx = [order.index(task_keys[t]) if t in spec.tasks else 0 for t in TASKS]
    if len(order) == 1:
        return replace(spec, snapshots=(0, 0, 0)), dict(task_states[spec.tasks[0]])
    first = {k: next(t for t in spec.tasks if task_keys[t] == k) for k in order}
    sd = {f"copies.{i}.{name}": v for i, k in enumerate(order) for name, v in task_states[first[k]].items()}
    return replace(spec, snapshots=tuple(idx)), sd


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the registered architecture `spec.arch` (as `TaskSnapshots` when the spec
    names several copies)."""
    if n_snapshots(spec) > 1:
        return TaskSnapshots(spec)
    return HEAD_MODELS.get(spec.arch)(spec)
