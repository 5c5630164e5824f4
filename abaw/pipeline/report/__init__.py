"""`abaw report` / `abaw evaluate`: validation evaluations of runs and an HTML report."""

from abaw.pipeline.report.evaluate import evaluate_run, evaluations_from_paths
from abaw.pipeline.report.html import RunEvaluation, build_report

__all__ = ["RunEvaluation", "build_report", "evaluate_run", "evaluations_from_paths"]
