"""AEVLP's frozen, randomly initialised graph convolution on the class text embeddings (``method_params.text_gcn``).

The AEVLP release (Fsoft-AIC/AEVLP ``models.py``: ``get_relation``, ``GraphConvolution``,
``PseudoLabelGeneratorOpenAI.gcn_forward``) adds to every class's raw CLIP text feature ``t`` (the
projection's output, before normalisation) the output of three graph-convolution layers over a
label-to-label relation, and normalises the sum: ``t' = t + G3(A, r(G2(A, r(G1(A, t)))))`` with
``G(A, x) = A x W`` (no bias), ``r`` a LeakyReLU of slope 0.2, widths ``D -> 1024 -> 1024 -> D``.
The weights are drawn once, uniformly in ``+-1 / sqrt(out features)``, in float16, and never trained
(``train.py`` freezes every parameter named ``gc``): a fixed random perturbation of the prompts,
which the release does not seed. Here it is seeded (:class:`TextGcn`), so a run repeats.

The relation ``A`` (:func:`gcn_relation`): the release's per-dataset similarity matrix
(``data/relation/relation+<dataset>.npy``, cosine similarities of label embeddings: symmetric, unit
diagonal), each row kept at its ``topk`` largest entries (VOC 20 and CUB 312: all; COCO 62 of 80,
NUS-WIDE 50 of 81), the diagonal set to 0, the row rescaled to sum to ``reweight`` (0.2) and the
diagonal set to ``1 - reweight``. spml's default matrix is the cosine similarities of the run's own
text embeddings; a user may give the release's file.

The arithmetic is float16, as the release's (its CLIP, prompts and GCN are half precision): the
input is rounded to float16, each layer multiplies in float16, and the sum is normalised in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

HIDDEN = 1024
SLOPE = 0.2


def gcn_relation(similarity: np.ndarray, topk: int, reweight: float) -> np.ndarray:
    """The release's ``gcn_relation`` of an ``L x L`` similarity matrix: float32, rows summing to 1.

    Args:
        similarity: Label-to-label similarities (the release's relation file, or cosine similarities).
        topk: Entries kept per row (the row's largest, its own among them), the rest zeroed; 0: all.
        reweight: Weight of the other classes together; the class itself keeps ``1 - reweight``.
    """
    rel = torch.tensor(np.asarray(similarity, dtype=np.float32))
    num = rel.shape[0]
    k = num if topk <= 0 else min(topk, num)
    keep = torch.zeros_like(rel, dtype=torch.bool)
    keep.scatter_(1, torch.topk(rel, k).indices, True)
    rel[~keep] = 0
    diagonal = torch.eye(num, dtype=torch.bool)
    rel[diagonal] = 0
    rel = rel / rel.sum(dim=1, keepdim=True) * reweight
    rel[diagonal] = 1 - reweight
    return rel.numpy()


class TextGcn(nn.Module):
    """The three frozen float16 graph-convolution layers, drawn from ``seed``.

    Args:
        dim: Width of the text features (512 for ViT-B CLIPs).
        seed: Seeds the uniform draws of the weights (``gc1``, ``gc2``, ``gc3`` in order).
    """

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shapes = ((dim, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, dim))
        self.weights = nn.ParameterList()
        for fan_in, fan_out in shapes:
            bound = 1.0 / math.sqrt(fan_out)  # GraphConvolution.reset_parameters: 1 / sqrt(weight.size(1))
            weight = torch.empty(fan_in, fan_out, dtype=torch.float16).uniform_(-bound, bound, generator=generator)
            self.weights.append(nn.Parameter(weight, requires_grad=False))
        self.activation = nn.LeakyReLU(SLOPE)

    @torch.no_grad()
    def forward(self, text: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
        """``text + GCN(text)`` in float16 (``L x D`` raw features, ``L x L`` relation), before normalisation."""
        x = text.to(torch.float16)
        adj = relation.to(torch.float16)
        h = x
        for i, weight in enumerate(self.weights):
            h = adj @ (h @ weight)
            if i < len(self.weights) - 1:
                h = self.activation(h)
        return h + x


def perturbed_text(raw: np.ndarray, relation: np.ndarray, seed: int) -> np.ndarray:
    """Unit-norm float32 ``L x D`` class embeddings: ``normalise(raw + GCN(raw))`` with the GCN drawn from ``seed``."""
    text = torch.from_numpy(np.asarray(raw, dtype=np.float32))
    out = TextGcn(text.shape[1], seed)(text, torch.from_numpy(np.asarray(relation, dtype=np.float32))).float()
    return torch.nn.functional.normalize(out, dim=-1).numpy()
