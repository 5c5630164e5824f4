"""The configuration of one fine-tuning run (saved as `finetune_config.json` in its folder)."""

from __future__ import annotations

from dataclasses import dataclass, field

from abaw.errors import AbawError


@dataclass(frozen=True)
class AugmentConfig:
    """Face augmentations applied to training frames (torchvision.transforms.v2)."""

    enabled: bool = True
    flip: float = 0.5  # horizontal flip probability
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random resized crop: share of the area kept
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # ... and its aspect-ratio range
    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    brightness: float = 0.3  # colour jitter strengths
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.02


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that determines a fine-tuning result (runtime knobs such as the device,
    data-loader workers and progress bars are not part of it).

    Batch size is per process: the effective batch is batch_size x processes x accum_steps.
    `lr` is the backbone's learning rate (its top layer's under layer decay); the head
    uses `head_lr`. `layer_decay=None` means 0.75 for ViT-like models (patch embedding +
    blocks) and 1.0 (off: one backbone rate) for others.
    """

    task: str  # au | expr | va
    backbone: str  # start spec, e.g. timm:vit_base_patch16_224.mae?norm=face
    data: str  # cropped_aligned root
    train_ann: str
    val_ann: str
    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-4
    head_lr: float = 1e-3
    layer_decay: float | None = None
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine schedule floor, relative to each group's peak
    grad_clip: float = 1.0  # max gradient norm (0: off)
    drop_path: float = 0.1  # stochastic depth rate, where the model supports it
    head_dropout: float = 0.0
    label_smoothing: float = 0.0  # EXPR cross-entropy
    class_weights: str = "none"  # none | balanced: EXPR inverse class frequency, AU positives x neg/pos
    patience: int = 3  # early stopping: epochs without improvement of the val metric
    min_delta: float = 0.0
    samples_per_epoch: int = 0  # 0: every training frame once per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True  # bf16 autocast (CUDA only)
    channels_last: bool = True  # (CUDA only)
    seed: int = 0

    def validate(self) -> None:
        """Raise AbawError on values that cannot work."""
        from abaw.pipeline.finetune.tasks import FINETUNE_TASKS

        FINETUNE_TASKS.get(self.task)
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps}
        for k, v in positive.items():
            if v < 1:
                raise AbawError(f"{k} must be >= 1, got {v}")
        if self.lr < 0 or self.head_lr < 0 or self.weight_decay < 0:
            raise AbawError("learning rates and weight decay must be >= 0")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise AbawError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise AbawError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_epochs < 0 or self.patience < 1 or self.samples_per_epoch < 0 or self.grad_clip < 0:
            raise AbawError("warmup_epochs, samples_per_epoch and grad_clip must be >= 0, patience >= 1")
        if self.class_weights not in ("none", "balanced"):
            raise AbawError(f"class_weights must be none or balanced, got {self.class_weights!r}")
        a = self.augment
        if not (0 < a.crop_scale[0] <= a.crop_scale[1] <= 1 and 0 < a.crop_ratio[0] <= a.crop_ratio[1]):
            raise AbawError(f"bad crop range scale={a.crop_scale} ratio={a.crop_ratio}")
        if not 0 <= a.flip <= 1:
            raise AbawError(f"flip probability must be in [0, 1], got {a.flip}")
