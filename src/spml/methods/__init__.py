"""Training methods composed from the lower layers, and their registry.

Each method module defines its hooks and an ``INFO`` (:class:`spml.training.MethodInfo`);
:mod:`spml.methods.registry` lists the shipped ones by name. Add a method by writing
``spml/methods/<name>.py`` and naming its ``INFO`` in the registry (or, outside spml, with
:func:`register_method`).
"""

from spml.methods.registry import get_method, list_methods, register_method

__all__ = ["get_method", "list_methods", "register_method"]
