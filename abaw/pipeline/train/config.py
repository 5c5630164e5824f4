"""`TrainConfig`: every knob of joint head training (saved as `config.json` in each run)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from abaw.config import from_dict, runtime_field, runtime_names, to_dict
from abaw.data.labels import TASKS, split_tasks, task_names
from abaw.errors import AbawError
from abaw.heads.model import ModelSpec
from abaw.pipeline.train.dataset import CONTEXTS, DEFAULT_MAX_GAP
from abaw.pipeline.train.postprocess import DEFAULT_KERNELS, DEFAULT_WINDOWS

SOLVERS = ("adam", "lbfgs")
# Fields added later, with the value that reproduces run folders saved before them (`run.read_config`).
OLD_DEFAULTS: dict[str, Any] = {"min_steps": 0, "smooth_kernels": ["box"], "honest_folds": 0, "select": "total"}
# (`va_dims` is no setting of its own: the flat `tasks` spell it, `v` / `a` for one VA dimension)
MODEL_FIELDS = tuple(f.name for f in fields(ModelSpec) if f.name not in ("keys", "dims", "snapshots", "va_dims"))


def _model_tasks(names) -> dict[str, Any]:
    """The ModelSpec fields of flat task names (`au,v` -> tasks (au, va), va_dims (valence,))."""
    try:
        tasks, dims = split_tasks(names)
    except ValueError as e:
        raise AbawError(str(e)) from None
    return {"tasks": tasks, "va_dims": dims}


@dataclass(frozen=True)
class TrainConfig:
    """Joint training of fusion + temporal module + task heads from cached features.

    Field groups: data (backbones, window, stride, max_gap, allow_missing, context), the head
    architecture (`model`: a ModelSpec whose backbone keys and dims are filled from the
    cache), losses (task_weights, au_pos_weight, expr_class_weight, va_loss), optimisation (lr,
    weight_decay, epochs, min_steps, batch_frames, warmup_epochs, patience, grad_clip, seed,
    init_from; solver lbfgs with lbfgs_c, lbfgs_iters: the linear head fitted full-batch instead), post-processing (au_thresholds, smoothing, smooth_windows, smooth_kernels,
    honest_folds) and runtime
    arguments (device, threads: recorded, never compared when resuming).

    `TrainConfig.create(temporal="tcn", epochs=5)` takes the model's fields flat, as the
    CLI, search spaces and old run folders spell them.
    """

    # data
    backbones: tuple[str, ...] = ()  # cache keys or backbone specs; () = every backbone in the cache
    window: int = 32  # frames per sequence window
    stride: int | None = None  # step between training windows (None = window: non-overlapping)
    max_gap: int | None = DEFAULT_MAX_GAP  # more missing frame numbers than this start a new segment
    allow_missing: bool = False  # skip labelled frames without a cached feature (reported)
    context: str = "labelled"  # labelled: windows over labelled frames | dense: every cached frame, loss on labelled
    # model: tasks (any non-empty subset of va, expr, au; v / a: valence / arousal only), fusion, temporal, sizes
    model: ModelSpec = field(default_factory=ModelSpec)
    # losses
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # va, expr, au
    au_pos_weight: str = "auto"  # none | auto (negatives/positives per AU, clipped to [1, 20]) | balanced (unclipped)
    expr_class_weight: str = "inverse"  # none | inverse (inverse class frequency)
    va_loss: str = "mean"  # mean | sum: (1 - CCC) of V and A averaged, or summed (the ABAW7 winner)
    # optimisation
    lr: float = 5e-4
    weight_decay: float = 0.05
    epochs: int = 20  # evaluation rounds (an epoch: one pass, or more passes when a pass is short of min_steps/epochs)
    min_steps: int = 1000  # optimizer steps at least, spread over the epochs (small data: several passes per epoch)
    batch_frames: int = 256  # frames per batch (windows per batch = batch_frames // window)
    warmup_epochs: float = 1.0
    patience: int = 5  # early stopping: epochs without a better validation score (any task's, with select=task)
    select: str = "total"  # total: one best epoch by P_MTL | task: each task keeps the weights of its own best epoch
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    solver: str = "adam"  # adam: mini-batch AdamW, epochs, early stopping | lbfgs: the linear head fitted full-batch
    lbfgs_c: float = 0.1  # lbfgs: inverse L2 strength as scikit-learn's C (penalty ||W||^2 / (2 C N) per task)
    lbfgs_iters: int = 500  # lbfgs: iterations at most per task
    seed: int = 0
    init_from: tuple[str, ...] = ()  # run directories to initialise from (progressive learning)
    # post-processing (fitted on validation)
    au_thresholds: bool = True
    smoothing: bool = True
    smooth_windows: tuple[int, ...] = DEFAULT_WINDOWS
    smooth_kernels: tuple[str, ...] = DEFAULT_KERNELS  # box | gaussian | median (chosen per task)
    honest_folds: int = 5  # validation videos in this many folds for the cross-fitted estimate (0: off)
    # runtime arguments
    device: str = runtime_field("auto")  # auto | cpu | cuda | cuda:N
    threads: int = runtime_field(0)  # CPU threads for torch during this run (0 = leave torch's setting)

    @classmethod
    def create(cls, **settings: Any) -> TrainConfig:
        """A config from flat settings (model fields such as `temporal` next to `lr`)."""
        return cls().with_(**settings)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From `to_dict` output, or the flat layout of run folders written before `model` existed."""
        data = dict(data)
        flat = {k: data.pop(k) for k in MODEL_FIELDS if k in data}
        if "tasks" in flat:
            flat.update(_model_tasks(flat["tasks"]))
        if flat:
            data["model"] = {**(data.get("model") or to_dict(ModelSpec())), **flat}
        return from_dict(cls, data)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (model fields inline), JSON types."""
        d = to_dict(self)
        model = d.pop("model")
        model["tasks"] = list(self.task_names)
        return {**{k: model[k] for k in MODEL_FIELDS}, **d}

    def recorded(self) -> dict[str, Any]:
        """The flat settings that define what the run computes (runtime arguments left out)."""
        skip = runtime_names(self)
        return {k: v for k, v in self.flat().items() if k not in skip}

    @classmethod
    def flat_names(cls) -> tuple[str, ...]:
        return tuple(cls().flat())

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.model.tasks

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks as `--tasks` spells them (`v` / `a` when VA trains one dimension)."""
        return task_names(self.model.tasks, self.model.va_dims)

    @property
    def va_dims(self) -> tuple[str, ...]:
        return self.model.va_dims

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
        self.model.validate()
        if len(self.task_weights) != 3 or any(w < 0 for w in self.task_weights):
            raise AbawError("task_weights: three non-negative numbers (va, expr, au)")
        if all(self.weights()[t] == 0 for t in self.tasks):
            raise AbawError("every enabled task has weight 0")
        checks = [(self.window >= 1, "window must be >= 1"), (self.train_stride >= 1, "stride must be >= 1"),
                  (self.max_gap is None or self.max_gap >= 0, "max_gap must be >= 0"),
                  (self.context in CONTEXTS, f"context: one of {', '.join(CONTEXTS)}"),
                  (self.au_pos_weight in ("none", "auto", "balanced"), "au_pos_weight: none, auto or balanced"),
                  (self.expr_class_weight in ("none", "inverse"), "expr_class_weight: none or inverse"),
                  (self.va_loss in ("mean", "sum"), "va_loss: mean or sum"),
                  (self.select in ("task", "total"), "select: task or total"),
                  (self.solver in SOLVERS, f"solver: one of {', '.join(SOLVERS)}"),
                  (self.solver != "lbfgs" or self.model.arch == "linear",
                   f"solver lbfgs fits the linear head only (arch linear, not {self.model.arch})"),
                  (self.lbfgs_c > 0, "lbfgs_c must be > 0"), (self.lbfgs_iters >= 1, "lbfgs_iters must be >= 1"),
                  (self.lr > 0, "lr must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.min_steps >= 0, "min_steps must be >= 0"), (self.honest_folds >= 0, "honest_folds >= 0"),
                  (len(self.smooth_kernels) > 0 and all(k in DEFAULT_KERNELS for k in self.smooth_kernels),
                   f"smooth_kernels: some of {', '.join(DEFAULT_KERNELS)}"),
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
        """The head of this config for the given backbones (tasks in canonical order)."""
        return replace(self.model, keys=tuple(keys), dims=tuple(dims),
                       tasks=tuple(t for t in TASKS if t in self.tasks))

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed; model fields may be given flat (for searches)."""
        model = {k: changes.pop(k) for k in MODEL_FIELDS if k in changes}
        if "tasks" in model:
            model.update(_model_tasks(model["tasks"]))
        if model:
            changes["model"] = replace(changes.get("model", self.model), **model)
        return replace(self, **changes)
