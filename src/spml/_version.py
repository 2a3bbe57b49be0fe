"""The package version: its own module so every layer may import it without importing ``spml``'s root.

``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``), so there is one place to bump.
"""

from __future__ import annotations

__version__ = "0.1.0"
