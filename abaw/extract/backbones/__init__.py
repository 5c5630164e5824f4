"""Frozen feature extractors ("backbones"): base types, the registry, one module per family.

    from abaw.extract.backbones import create_backbone
    bb = create_backbone("timm:test_efficientnet_gn?size=112&pretrained=0")

Modules: `base` (Preprocess, Backbone, normalisations, weights hashing and loading),
`registry` (specs, declared options, cache keys, `create_backbone`) and the families,
which register themselves on import: `timm` (any timm model; also the model builder
of `abaw finetune`), `hsemotion` (HSEmotion / EmotiEffLib models), `ckpt` (fine-tuned
checkpoints: `ckpt:DIR`), `mtcnn` (MTCNN's face networks: `mtcnn:onet`).
This package imports the families; no family imports this package.
"""

from __future__ import annotations

from abaw.extract.backbones import ckpt, fer, hsemotion, mtcnn, timm  # noqa: F401  the families register
from abaw.extract.backbones.base import (
    FACE_MEAN,
    FACE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMS,
    Backbone,
    Preprocess,
    load_state_dict_file,
    state_dict_sha256,
)
from abaw.extract.backbones.registry import (
    BACKBONES,
    KEY,
    PREPROCESS_OPTIONS,
    TRUST_PICKLE,
    BackboneFactory,
    BackboneFamily,
    Option,
    bool_option,
    create_backbone,
    parse_bool,
    parse_spec,
    preprocess_from_options,
    register_backbone,
    spec_key,
    validate_spec,
)
from abaw.extract.backbones.timm import TimmModel, build_timm, timm_weights_options
from abaw.fingerprint import file_sha256, same_features

_bool = bool_option  # the name branches written before the split import; use bool_option

__all__ = [
    "BACKBONES", "FACE_MEAN", "FACE_STD", "IMAGENET_MEAN", "IMAGENET_STD", "KEY", "NORMS", "PREPROCESS_OPTIONS",
    "TRUST_PICKLE", "Backbone", "BackboneFactory", "BackboneFamily", "Option", "Preprocess", "TimmModel",
    "bool_option", "build_timm", "create_backbone", "file_sha256", "load_state_dict_file", "parse_bool",
    "parse_spec", "preprocess_from_options", "register_backbone", "same_features", "spec_key",
    "state_dict_sha256", "timm_weights_options", "validate_spec",
]
