"""Feature fusion, temporal modules and task heads trained from the cache."""

from abaw.heads import linear  # noqa: F401  (registers the "linear" head model)
from abaw.heads.fusion import FUSIONS, create_fusion
from abaw.heads.model import HEAD_MODELS, ModelSpec, MultiTaskModel, build_model
from abaw.heads.temporal import TEMPORALS, TemporalOptions, create_temporal

__all__ = ["FUSIONS", "HEAD_MODELS", "TEMPORALS", "ModelSpec", "MultiTaskModel", "TemporalOptions", "build_model",
           "create_fusion", "create_temporal"]
