"""Backbones (timm), heads (linear, Query2Label), the classifier, weights files and the feature cache."""

from spml.models.backbones import (
    backbone_data_config,
    create_backbone,
    freeze_batchnorm,
    spatial_features,
    thaw_batchnorm,
    unwrap_backbone,
    untrained_parameters,
)
from spml.models.classifier import Classifier, create_classifier
from spml.models.features import extract_features
from spml.models.heads import (
    LinearHead,
    Query2LabelHead,
    create_head,
    list_heads,
    register_head,
)
from spml.models.weights import (
    LITE0_PACKAGE,
    load_weights,
    map_lite0_state_dict,
    read_state_dict,
    save_weights,
    weights_identity,
)

__all__ = [
    "LITE0_PACKAGE",
    "Classifier",
    "LinearHead",
    "Query2LabelHead",
    "backbone_data_config",
    "create_backbone",
    "create_classifier",
    "create_head",
    "extract_features",
    "freeze_batchnorm",
    "list_heads",
    "load_weights",
    "map_lite0_state_dict",
    "read_state_dict",
    "register_head",
    "save_weights",
    "spatial_features",
    "thaw_batchnorm",
    "untrained_parameters",
    "unwrap_backbone",
    "weights_identity",
]
