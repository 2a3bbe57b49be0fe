"""spml: multi-label image classifiers from weak labels."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``spml.load`` (:func:`spml.deploy.load`), imported on first use so ``import spml`` stays light."""
    if name == "load":
        from spml.deploy import load

        return load
    raise AttributeError(f"module 'spml' has no attribute {name!r}")
