"""The run report: step table (seeds aggregated), plots, HTML and Markdown.

`runs` says what a report is made of (runs, methods, seeds); `build` writes
it. `python -m dkd_core report` and the pipeline's report step call
`build_report`.
"""

from dkd_core.report.build import ReportFiles, build_report
from dkd_core.report.runs import RunInput, aggregate, step_table

__all__ = ["ReportFiles", "RunInput", "aggregate", "build_report", "step_table"]
