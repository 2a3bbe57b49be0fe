"""``spml annotate``: collect single positive labels in a browser (docs/annotate.md).

Above :mod:`spml.deploy` and :mod:`spml.vlm` (a trained model or a CLIP suggests classes) and below
the CLI. The answers are kept by :class:`spml.data.annotated.AnnotationStore` as ordinary observed
labels; this package adds the queue (:mod:`~spml.annotate.queue`) and the web app
(:mod:`~spml.annotate.server`, Flask: the optional extra ``spml[annotate]``, imported only when a
server is built).
"""
