"""The run report: tables, figures, HTML and Markdown of one run or a comparison of runs.

One concern per module:

    runs       what a report is made of: runs, methods, seeds aggregated (mean ± std)
    inputs     finding runs (run folders, pipeline histories) and what lies beside
               each step's checkpoint (meta.json, provenance, train log, samples)
    tables     the numbers: class x step IoU, forgetting, increments, training figures
    published  the authors' published results, by benchmark
    figures    the matplotlib figures, bounded in size at any class count
    samples    the qualitative figure from each step's sample predictions
    document   sections rendered as one self-contained HTML page and as Markdown
    build      `build_report`: all of the above into one folder

`python -m dkd_core report` and the pipeline's report step call `build_report`.
"""

from dkd_core.report.build import ReportFiles, build_report
from dkd_core.report.inputs import run_from_folder, run_from_history
from dkd_core.report.runs import RunInput, aggregate, step_table

__all__ = [
    "ReportFiles",
    "RunInput",
    "aggregate",
    "build_report",
    "run_from_folder",
    "run_from_history",
    "step_table",
]
