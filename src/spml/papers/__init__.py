"""Published tables of the papers spml implements, and ``spml reproduce``'s plan, runs and tables.

:mod:`spml.papers.schema` reads the per-paper YAML files shipped beside it (typed, checked on load);
:mod:`spml.papers.reproduce` runs a table's rows from their shipped configs through the grid's
resumable machinery, estimates their cost, and writes the table with the published numbers beside
spml's. Sits above :mod:`spml.api` (it trains through :func:`spml.api.grid`) and below the CLI.
"""

from spml.papers.schema import Paper, PublishedRow, PublishedTable, load_paper, paper_names

__all__ = ["Paper", "PublishedRow", "PublishedTable", "load_paper", "paper_names"]
