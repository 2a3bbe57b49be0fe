"""Vision-language models for pseudo-labels.

Frozen open_clip models, prompt text embeddings, cached image/crop scores and a micro CLIP for
offline tests (see docs/vlm.md).
"""

from spml.vlm.model import INTERPOLATIONS, PREPROCESSING_MODES, VLM, Preprocess, load_vlm, model_name_for, parse_spec
from spml.vlm.names import prompt_names
from spml.vlm.scores import ScoreCache, load_score_cache, score_images, score_split, scores_cache, split_scores
from spml.vlm.text import DEFAULT_TEMPLATES, check_classes, check_templates, text_embeddings

__all__ = [
    "DEFAULT_TEMPLATES",
    "INTERPOLATIONS",
    "PREPROCESSING_MODES",
    "VLM",
    "Preprocess",
    "ScoreCache",
    "check_classes",
    "check_templates",
    "load_score_cache",
    "load_vlm",
    "model_name_for",
    "parse_spec",
    "prompt_names",
    "score_images",
    "score_split",
    "scores_cache",
    "split_scores",
    "text_embeddings",
]
