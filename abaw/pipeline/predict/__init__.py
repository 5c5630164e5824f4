"""`abaw predict`: a system of finished runs applied to a test list or to raw videos."""

from abaw.pipeline.predict.system import (
    System,
    load_system,
    predict_test_list,
    predict_videos,
)

__all__ = ["System", "load_system", "predict_test_list", "predict_videos"]
