"""spml: multi-label image classifiers from weak labels."""

__version__ = "0.1.0"
