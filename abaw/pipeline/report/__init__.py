"""`abaw report`: validation evaluations of runs and search folders, and an HTML report."""

from abaw.pipeline.report.command import ReportResult, report
from abaw.pipeline.report.evaluate import evaluate_run, evaluations_from_paths
from abaw.pipeline.report.html import RunEvaluation, build_report

__all__ = ["ReportResult", "RunEvaluation", "build_report", "evaluate_run", "evaluations_from_paths", "report"]
