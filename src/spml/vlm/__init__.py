"""Vision-language models: frozen open_clip models, prompt text embeddings, cached image/crop scores
and a micro CLIP for offline tests (see docs/vlm.md)."""

from spml.vlm.model import VLM, Preprocess, load_vlm, parse_spec
from spml.vlm.scores import ScoreCache, load_score_cache, score_images, score_split, scores_cache, split_scores
from spml.vlm.text import DEFAULT_TEMPLATES, check_classes, check_templates, text_embeddings

__all__ = [
    "DEFAULT_TEMPLATES",
    "VLM",
    "Preprocess",
    "ScoreCache",
    "check_classes",
    "check_templates",
    "load_score_cache",
    "load_vlm",
    "parse_spec",
    "score_images",
    "score_split",
    "scores_cache",
    "split_scores",
    "text_embeddings",
]
