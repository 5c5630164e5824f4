"""Moved to `abaw.extract.backbones.hsemotion`; this name stays importable for existing code."""

from abaw.extract.backbones.hsemotion import (
    COMMIT,
    MODELS,
    URL,
    HSModel,
    cache_dir,
    fetch_verified,
    git_blob_sha1,
    load_weights,
    state_dict_from_model_pickle,
)

__all__ = ["COMMIT", "MODELS", "URL", "HSModel", "cache_dir", "fetch_verified", "git_blob_sha1", "load_weights",
    "state_dict_from_model_pickle"]
