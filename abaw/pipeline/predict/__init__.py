"""`abaw predict`: a system of finished runs applied to a test list (system), or any system
to videos and images (anyinput, imported on use: it needs torch)."""

from abaw.pipeline.predict.system import (
    System,
    load_system,
    predict_test_list,
)

__all__ = ["System", "load_system", "predict_test_list"]
