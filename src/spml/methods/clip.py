"""The CLIP settings every CLIP-driven method shares (VLPL, AEVLP, CDUL), and how they open it.

One base of ``method_params`` so that the model spec, offline weights, preprocessing, prompt names
and template mean the same in every method, are checked by the same rules, and key the same score
cache (:func:`spml.vlm.split_scores`): two methods with equal settings share one cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spml.data.layout import Split
from spml.errors import SpmlError
from spml.training import RunContext
from spml.vlm import (
    DEFAULT_TEMPLATES,
    INTERPOLATIONS,
    PREPROCESSING_MODES,
    VLM,
    ScoreCache,
    load_vlm,
    prompt_names,
    split_scores,
)
from spml.vlm.text import check_templates


@dataclass
class ClipParams:
    """The CLIP part of a method's ``method_params`` (subclasses add their own keys after these).

    Attributes:
        vlm: CLIP spec for :func:`spml.vlm.load_vlm` (``open_clip:MODEL/TAG``, ...).
        vlm_checkpoint: Local CLIP weights file (with ``vlm_model_config``), e.g. the micro CLIP.
        vlm_model_config: open_clip model config (JSON) of ``vlm_checkpoint``.
        vlm_image_size: CLIP input side other than the model's native one (None: native).
        vlm_preprocess: ``native`` (the model's centre crop and statistics) or ``squash`` (the whole
            image resized to a square with ImageNet statistics, as the references fed CLIP).
        vlm_interpolation: ``bilinear`` or ``bicubic`` resampling of the CLIP inputs; None keeps the
            model's own (bicubic for OpenAI's CLIPs). VLPL's and AEVLP's releases resized with
            torchvision's default, bilinear.
        prompt_names: Names in the prompts: ``auto`` (readable names shipped for VOC and CUB, else
            the class names), ``raw`` (the class names) or a names file, one per line in class order.
        template: The prompt template (``{}`` is the class name).
        vlm_batch_size: Images per CLIP forward pass when a cache is built.
    """

    vlm: str = "open_clip:ViT-B-16/openai"
    vlm_checkpoint: str | None = None
    vlm_model_config: str | None = None
    vlm_image_size: int | None = None
    vlm_preprocess: str = "squash"
    vlm_interpolation: str | None = None
    prompt_names: str = "auto"
    template: str = DEFAULT_TEMPLATES[0]
    vlm_batch_size: int = 64

    def check_clip(self) -> None:
        """Refuse an unknown preprocessing mode or interpolation, a template without ``{}`` or a batch size below 1.

        Raises:
            SpmlError: Naming the ``method_params`` key.
        """
        if self.vlm_preprocess not in PREPROCESSING_MODES:
            raise SpmlError(
                f"method_params.vlm_preprocess must be one of {', '.join(PREPROCESSING_MODES)}, got {self.vlm_preprocess!r}"
            )
        if self.vlm_interpolation is not None and self.vlm_interpolation not in INTERPOLATIONS:
            raise SpmlError(
                f"method_params.vlm_interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.vlm_interpolation!r}"
            )
        check_templates([self.template])
        if self.vlm_batch_size < 1:
            raise SpmlError(f"method_params.vlm_batch_size must be positive, got {self.vlm_batch_size}")

    def load_clip(self, ctx: RunContext) -> VLM:
        """Return the frozen CLIP these settings name, on the run's device."""
        return load_vlm(
            self.vlm, self.vlm_checkpoint, self.vlm_model_config, device=ctx.device, preprocessing=self.vlm_preprocess,
            interpolation=self.vlm_interpolation,
        )

    def words(self, ctx: RunContext) -> list[str]:
        """Return the names that fill the template, one per class (:func:`spml.vlm.prompt_names`)."""
        return prompt_names(ctx.data.classes, self.prompt_names)

    def global_scores(
        self, vlm: VLM, split: Split, ctx: RunContext, text: np.ndarray | None = None, text_key: dict[str, Any] | None = None
    ) -> ScoreCache:
        """Return the whole-image score cache of ``split`` for these settings, built first if needed.

        ``text`` (with ``text_key``): class embeddings to score against instead of the template's (AEVLP's text GCN).
        """
        return split_scores(
            vlm,
            split,
            ctx.data.classes,
            [self.template],
            ctx.data.cache_dir,
            batch_size=self.vlm_batch_size,
            image_size=self.vlm_image_size,
            num_workers=ctx.config.num_workers,
            prompt_names=self.words(ctx),
            text=text,
            text_key=text_key,
        )
