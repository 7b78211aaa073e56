"""Analysis: paired statistics with Holm correction, comparison reports and plots."""

from sympformer.analysis.report import build_report, collect_runs
from sympformer.analysis.stats import holm, paired_t_test

__all__ = ["build_report", "collect_runs", "holm", "paired_t_test"]
