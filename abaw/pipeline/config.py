"""`TrainConfig`: every knob of joint head training (saved as `config.json` in each run)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from abaw.data.labels import TASKS
from abaw.errors import AbawError
from abaw.heads.model import MODELS, ModelSpec
from abaw.pipeline.dataset import DEFAULT_MAX_GAP
from abaw.pipeline.postprocess import DEFAULT_WINDOWS


@dataclass(frozen=True)
class TrainConfig:
    """Joint training of fusion + temporal module + task heads from cached features.

    Field groups: data (backbones, tasks, window, stride, max_gap, allow_missing),
    model (fusion, temporal, d_model, layers, heads, ff_mult, kernel, causal, dropout),
    losses (task_weights, au_pos_weight, expr_class_weight), optimisation (lr,
    weight_decay, epochs, batch_frames, warmup_epochs, patience, grad_clip, seed,
    device, threads, init_from) and post-processing (au_thresholds, smoothing, smooth_windows).
    """

    # data
    backbones: tuple[str, ...] = ()  # cache keys or backbone specs; () = every backbone in the cache
    tasks: tuple[str, ...] = TASKS  # any non-empty subset of ("va", "expr", "au")
    window: int = 32  # frames per sequence window
    stride: int | None = None  # step between training windows (None = window: non-overlapping)
    max_gap: int | None = DEFAULT_MAX_GAP  # more missing frame numbers than this start a new segment
    allow_missing: bool = False  # skip labelled frames without a cached feature (reported)
    # model
    arch: str = "multitask"  # head architecture registered in abaw.heads.MODELS (multitask | linear)
    fusion: str = "sum"  # sum | concat | attention
    temporal: str = "transformer"  # none | transformer | tcn | gru | lstm
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    ff_mult: int = 2
    kernel: int = 3
    causal: bool = False
    dropout: float = 0.1
    # losses
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # va, expr, au
    au_pos_weight: str = "none"  # none | auto (negatives/positives per AU, clipped to [1, 20])
    expr_class_weight: str = "inverse"  # none | inverse (inverse class frequency)
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.05
    epochs: int = 20
    batch_frames: int = 1024  # frames per batch (windows per batch = batch_frames // window)
    warmup_epochs: float = 1.0
    patience: int = 5  # early stopping: epochs without a better validation P_MTL
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch during this run (0 = leave torch's setting)
    init_from: tuple[str, ...] = ()  # run directories to initialise from (progressive learning)
    # post-processing (fitted on validation)
    au_thresholds: bool = True
    smoothing: bool = True
    smooth_windows: tuple[int, ...] = DEFAULT_WINDOWS

    @property
    def train_stride(self) -> int:
        return self.window if self.stride is None else self.stride

    @property
    def windows_per_batch(self) -> int:
        return max(1, self.batch_frames // self.window)

    def weights(self) -> dict[str, float]:
        return dict(zip(TASKS, self.task_weights))

    def validate(self) -> TrainConfig:
        """Raise AbawError on an inconsistent config; return self."""
        from abaw.heads.fusion import FUSIONS
        from abaw.heads.temporal import TEMPORALS

        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise AbawError(f"tasks must be a non-empty subset of {','.join(TASKS)}; got {self.tasks}")
        FUSIONS.get(self.fusion)
        MODELS.get(self.arch)
        TEMPORALS.get(self.temporal)
        if len(self.task_weights) != 3 or any(w < 0 for w in self.task_weights):
            raise AbawError("task_weights: three non-negative numbers (va, expr, au)")
        if all(self.weights()[t] == 0 for t in self.tasks):
            raise AbawError("every enabled task has weight 0")
        checks = [(self.window >= 1, "window must be >= 1"), (self.train_stride >= 1, "stride must be >= 1"),
                  (self.max_gap is None or self.max_gap >= 0, "max_gap must be >= 0"),
                  (self.d_model >= 2 and self.d_model % 2 == 0, "d_model must be even and >= 2"),
                  (self.layers >= 1, "layers must be >= 1"), (self.heads >= 1, "heads must be >= 1"),
                  (self.temporal != "transformer" or self.d_model % self.heads == 0,
                   "d_model must be divisible by heads"),
                  (self.kernel >= 1, "kernel must be >= 1"), (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
                  (self.au_pos_weight in ("none", "auto"), "au_pos_weight: none or auto"),
                  (self.expr_class_weight in ("none", "inverse"), "expr_class_weight: none or inverse"),
                  (self.lr > 0, "lr must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_frames >= 1, "batch_frames must be >= 1"),
                  (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"), (self.patience >= 1, "patience >= 1"),
                  (self.grad_clip >= 0, "grad_clip must be >= 0"), (self.threads >= 0, "threads must be >= 0"),
                  (all(w >= 1 for w in self.smooth_windows) and len(self.smooth_windows) > 0,
                   "smooth_windows: frame counts >= 1")]
        for ok, msg in checks:
            if not ok:
                raise AbawError(f"TrainConfig: {msg}")
        return self

    def model_spec(self, keys: tuple[str, ...], dims: tuple[int, ...]) -> ModelSpec:
        return ModelSpec(keys=tuple(keys), dims=tuple(dims), tasks=tuple(t for t in TASKS if t in self.tasks),
                         fusion=self.fusion, temporal=self.temporal, d_model=self.d_model, layers=self.layers,
                         heads=self.heads, ff_mult=self.ff_mult, kernel=self.kernel, causal=self.causal,
                         dropout=self.dropout, arch=self.arch)

    def with_(self, **changes) -> TrainConfig:
        """A copy with some fields changed (for searches)."""
        return replace(self, **changes)
