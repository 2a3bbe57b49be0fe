"""Reports on finished runs: a static HTML page of figures per run, and tables comparing runs.

Sits above :mod:`spml.methods` (it draws the methods' diagnostics) and below the CLI; it reads run
folders through :class:`spml.deploy.RunFiles` and rebuilds models only through
:func:`spml.training.load_run`.
"""

from spml._lazy import lazy_exports

# Imported on first use (spml._lazy): a table over runs does not import matplotlib or torch.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "Table": "spml.reports.compare",
        "compare_runs": "spml.reports.compare",
        "find_runs": "spml.reports.compare",
        "format_table": "spml.reports.compare",
        "REPORT_FILE": "spml.reports.report",
        "write_report": "spml.reports.report",
    },
)
