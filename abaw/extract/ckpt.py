"""Moved to `abaw.extract.backbones.ckpt`; this name stays importable for existing code."""

from abaw.extract.backbones.ckpt import (
    BACKBONE_JSON,
    CKPT_FORMAT,
    CKPT_VERSION,
    HEAD_FILE,
    WEIGHTS_FILE,
    CheckpointInfo,
    read_checkpoint,
    write_checkpoint,
)

__all__ = ["BACKBONE_JSON", "CKPT_FORMAT", "CKPT_VERSION", "HEAD_FILE", "WEIGHTS_FILE", "CheckpointInfo",
    "read_checkpoint", "write_checkpoint"]
