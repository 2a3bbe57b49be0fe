"""Training methods composed from the lower layers; each module registers itself with
:func:`spml.training.register_method` when imported, so importing this package makes every
method available to ``--method``.

Add a method by writing ``spml/methods/<name>.py`` (hooks + ``register_method``) and importing it
here.
"""

from spml.methods import ccd, teacher_student, vlpl  # noqa: F401  (modules register their methods)
