"""Separate training: fine-tune a backbone per task on single frames (`abaw finetune`).

The result folder is a first-class backbone: `create_backbone("ckpt:DIR")`.
"""

from abaw.finetune.config import AugmentConfig, FinetuneConfig

__all__ = ["AugmentConfig", "FinetuneConfig", "finetune"]


def finetune(*args, **kwargs):
    """See `abaw.finetune.train.finetune` (imported lazily: it pulls in torch and timm)."""
    from abaw.finetune.train import finetune as _finetune

    return _finetune(*args, **kwargs)
