"""Reports on finished runs: a static HTML page of figures per run, and tables comparing runs.

Sits above :mod:`spml.methods` (it draws the methods' diagnostics) and below the CLI; it reads run
folders through :class:`spml.deploy.RunFiles` and rebuilds models only through
:func:`spml.training.load_run`.
"""

from spml.reports.compare import Table, compare_runs, find_runs, format_table
from spml.reports.report import REPORT_FILE, write_report

__all__ = ["REPORT_FILE", "Table", "compare_runs", "find_runs", "format_table", "write_report"]
