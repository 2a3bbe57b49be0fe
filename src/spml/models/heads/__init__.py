"""Classification heads; importing this package registers ``linear`` and ``query2label``."""

from spml.models.heads.linear import LinearHead
from spml.models.heads.query2label import GroupWiseLinear, Query2LabelHead, sine_position_encoding
from spml.models.heads.registry import create_head, list_heads, register_head

__all__ = [
    "GroupWiseLinear",
    "LinearHead",
    "Query2LabelHead",
    "create_head",
    "list_heads",
    "register_head",
    "sine_position_encoding",
]
