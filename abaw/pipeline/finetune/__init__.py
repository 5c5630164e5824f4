"""Separate training: fine-tune a backbone per task on single frames (`abaw finetune`).

The result folder is a first-class backbone: `create_backbone("ckpt:DIR")`.
"""

from abaw.pipeline.finetune.config import AugmentConfig, FinetuneConfig
from abaw.pipeline.finetune.train import finetune

__all__ = ["AugmentConfig", "FinetuneConfig", "finetune"]
