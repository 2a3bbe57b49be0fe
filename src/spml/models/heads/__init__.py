"""Classification heads; importing this package registers ``linear`` and ``query2label``."""

from spml.models.heads.linear import LinearHead
from spml.models.heads.query2label import (
    REFERENCE_CONFIG,
    GroupWiseLinear,
    Query2LabelHead,
    backbone_state_from_reference,
    query2label_from_reference,
    read_reference_checkpoint,
    sine_position_encoding,
)
from spml.models.heads.registry import create_head, list_heads, register_head

__all__ = [
    "REFERENCE_CONFIG",
    "GroupWiseLinear",
    "LinearHead",
    "Query2LabelHead",
    "backbone_state_from_reference",
    "create_head",
    "list_heads",
    "query2label_from_reference",
    "read_reference_checkpoint",
    "register_head",
    "sine_position_encoding",
]
