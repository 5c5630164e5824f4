"""Frozen backbones over videos and frame folders -> the Zarr feature cache.

    from abaw.extract import extract, ExtractConfig
    summary = extract(["videos/"], "cache.zarr", ["timm:resnet50"], ExtractConfig())

Modules: `backbones/` (base types, registry and declared options, one module per
family: timm, hsemotion, ckpt, mtcnn), `video` (PyAV decoding), `faces` (MTCNN, person
choice, alignment), `frames` (aligned frame folders), `preview` (contact sheets), and the
run: `config` (ExtractConfig, ExtractSummary), `sources` (inputs, `--only` lists), `plan`
(jobs, resume/conflicts, sharding), `context` (RunContext), `forward` (batched
backbones), `sink` (the writer), `video_run` (decode -> detect -> align), `runner`
(`extract`).
"""

from __future__ import annotations

from typing import Any

_LAZY = {"extract": "runner", "ExtractConfig": "config", "ExtractSummary": "config",
         "create_backbone": "backbones", "Backbone": "backbones"}


def __getattr__(name: str) -> Any:  # imports torch only when the API is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"abaw.extract.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'abaw.extract' has no attribute {name!r}")


__all__ = list(_LAZY)
