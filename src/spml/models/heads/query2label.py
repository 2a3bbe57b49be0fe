"""Query2Label head (Liu et al. 2021): label queries attend to the spatial feature map.

Facts from the paper and its public code (SlongLiu/query2labels): a 1 x 1 convolution projects the
backbone map to ``d_model`` channels; a DETR-style 2-D sine positional encoding is added to the
keys of every attention over image positions (not to the values); optional Transformer encoder
layers refine the map; decoder layers update one learnable query per class (``Q_0`` = the label
embeddings, ``Q_i = MultiHead(Q_{i-1}, F, F)`` plus self-attention and a feed-forward block); a
group-wise linear layer turns query ``k`` into logit ``k`` with its own weight vector. The defaults
are small (the paper uses d_model 2048, 1 encoder and 2 decoder layers with ResNet-101).

Two styles share these parts:

* ``spml`` (the default, unchanged): queries start at the label embeddings, every decoder layer has
  label self-attention, a 1 x 1 input projection always, no final decoder norm;
* ``reference``: the authors' code (``lib/models/transformer.py``, ``query2label.py``): queries start
  at zeros and the label embedding is re-added as ``query_pos`` to the cross-attention query of every
  layer, no decoder self-attention (their default removes it in every layer), a final decoder
  LayerNorm, an identity input projection when the map already has ``d_model`` channels. With
  :data:`REFERENCE_CONFIG` (hidden 2048, FFN 8192, 4 heads, 1 + 2 layers, post-norm) it loads their
  released weights: :func:`query2label_from_reference`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spml.errors import SpmlError
from spml.models.heads.registry import register_head


def sine_position_encoding(
    height: int, width: int, dim: int, *, temperature: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding: ``dim x H x W``, first half encodes y, second half x.

    Coordinates are ``1..H`` (``1..W``) scaled to ``(0, 2*pi]``; channel pairs ``(2i, 2i+1)`` hold
    ``sin`` / ``cos`` at frequency ``temperature ** (-2i / (dim/2))``.
    """
    if dim % 4:
        raise ValueError(f"positional encoding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    i = torch.arange(half, dtype=torch.float32, device=device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)

    def encode(coord: torch.Tensor) -> torch.Tensor:  # n -> n x half, sin on even channels, cos on odd
        angle = coord[:, None] / freq
        return torch.stack((angle[:, 0::2].sin(), angle[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)


class GroupWiseLinear(nn.Module):
    """Per-class linear output: ``logit_k = <W_k, q_k> + b_k`` for query ``q_k`` (B x L x d -> B x L)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """Per-class logits ``B x L`` of the queries ``B x L x d``."""
        return (queries * self.weight).sum(-1) + self.bias


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention over image positions; the encoding is added to queries and keys."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One encoder layer over the image positions ``src`` with the positional encoding ``pos``."""
        qk = src + pos
        src = self.norm1(src + self.drop(self.attn(qk, qk, src, need_weights=False)[0]))
        return self.norm2(src + self.drop(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Post-norm label-query self-attention (optional), cross-attention to the map (keys + encoding), FFN.

    ``query_pos`` (the reference style's label embedding) is added to the attention queries (and
    self-attention keys), not to the values.
    """

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, self_attention: bool = True) -> None:
        super().__init__()
        if self_attention:
            self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, hidden, dropout)
        self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.self_attention = self_attention

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Update the ``B x L x d`` queries."""
        q = queries
        if self.self_attention:
            qk = q if query_pos is None else q + query_pos
            q = self.norm1(q + self.drop(self.self_attn(qk, qk, q, need_weights=False)[0]))
        query = q if query_pos is None else q + query_pos
        q = self.norm2(q + self.drop(self.cross_attn(query, memory + pos, memory, need_weights=False)[0]))
        return self.norm3(q + self.drop(self.ffn(q)))


@register_head("query2label")
class Query2LabelHead(nn.Module):
    """Query2Label on a ``B x C x H x W`` map.

    Args:
        num_features: Channels ``C`` of the map.
        num_classes: Labels ``L`` (one learnable query each).
        d_model: Transformer width (divisible by ``num_heads`` and by 4 for the encoding).
        num_heads: Attention heads.
        decoder_layers: Decoder layers (the paper: 2).
        encoder_layers: Encoder layers before the decoder (the paper: 1; 0 disables).
        dim_feedforward: Feed-forward width, ``4 * d_model`` when None.
        dropout: Dropout in attention and feed-forward blocks.
        style: ``spml`` or ``reference`` (see the module docstring).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        d_model: int = 256,
        num_heads: int = 4,
        decoder_layers: int = 2,
        encoder_layers: int = 1,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        style: str = "spml",
    ) -> None:
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"query2label style must be one of {', '.join(STYLES)}, got {style!r}")
        if d_model % num_heads or d_model % 4:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} and by 4")
        if decoder_layers < 1 or encoder_layers < 0:
            raise ValueError(
                f"need decoder_layers >= 1 and encoder_layers >= 0, got {decoder_layers}, {encoder_layers}"
            )
        hidden = dim_feedforward or 4 * d_model
        self.num_features = num_features
        self.num_classes = num_classes
        self.d_model = d_model
        self.style = style
        reference = style == "reference"
        identity = reference and num_features == d_model
        self.input_proj = nn.Identity() if identity else nn.Conv2d(num_features, d_model, kernel_size=1)
        self.query_embed = nn.Embedding(num_classes, d_model)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, hidden, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(
            DecoderLayer(d_model, num_heads, hidden, dropout, self_attention=not reference)
            for _ in range(decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(d_model) if reference else nn.Identity()
        self.fc = GroupWiseLinear(num_classes, d_model)

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``B x L`` logits (the ``B x L x d_model`` final queries when ``pre_logits``)."""
        if features.ndim != 4:
            raise ValueError(
                f"query2label needs the spatial B x C x H x W map, got {tuple(features.shape)} "
                "(pooled cached features only suit the linear head)"
            )
        b, _, h, w = features.shape
        memory = self.input_proj(features).flatten(2).transpose(1, 2)  # B x HW x d
        pos = sine_position_encoding(h, w, self.d_model, device=features.device)
        pos = pos.to(memory.dtype).flatten(1).transpose(0, 1).unsqueeze(0)  # 1 x HW x d
        for layer in self.encoder:
            memory = layer(memory, pos)
        labels = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        if self.style == "reference":
            queries, query_pos = torch.zeros_like(labels), labels
        else:
            queries, query_pos = labels, None
        for layer in self.decoder:
            queries = layer(queries, memory, pos, query_pos)
        queries = self.decoder_norm(queries)
        return queries if pre_logits else self.fc(queries)


STYLES = ("spml", "reference")
# The authors' defaults (main_mlc.py): hidden 2048, FFN 8192, 4 heads, 1 encoder + 2 decoder layers.
REFERENCE_CONFIG: dict[str, Any] = {
    "d_model": 2048, "dim_feedforward": 8192, "num_heads": 4, "encoder_layers": 1, "decoder_layers": 2,
    "dropout": 0.1, "style": "reference",
}
_LAYER_KEY = re.compile(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)")
_RENAMES = {
    "encoder": {"self_attn.": "attn.", "linear1.": "ffn.0.", "linear2.": "ffn.3.", "norm1.": "norm1.", "norm2.": "norm2."},
    "decoder": {
        "self_attn.": "self_attn.", "multihead_attn.": "cross_attn.", "linear1.": "ffn.0.", "linear2.": "ffn.3.",
        "norm1.": "norm1.", "norm2.": "norm2.", "norm3.": "norm3.",
    },
}


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict of an authors' checkpoint file (a ``torch.save`` dict, read with ``weights_only``).

    Raises:
        SpmlError: Missing or unreadable file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise SpmlError("Query2Label checkpoint file does not exist", path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a foreign or broken file
        raise SpmlError(f"not a readable torch checkpoint ({type(err).__name__})", path) from None
    if isinstance(blob, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(blob.get(key), Mapping):
                blob = blob[key]
                break
    if not isinstance(blob, Mapping) or "query_embed.weight" not in {k.removeprefix("module.") for k in blob}:
        raise SpmlError("no Query2Label state dict (query_embed.weight) in this checkpoint", path)
    return dict(blob)


def backbone_state_from_reference(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the backbone part of an authors' state dict under the backbone's own names.

    Their ResNet backbones are torchvision models wrapped as ``backbone.0.body`` (classifier removed);
    timm's ResNets use torchvision's parameter names, so the result loads into ``Classifier.backbone``
    of a timm ``resnet101`` (``load_state_dict(..., strict=False)``: timm's ``fc`` stays).
    """
    prefix = "backbone.0.body."
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def _map_reference_key(key: str) -> str | None:
    """Map a reference parameter name to the head's; None for keys the head does not hold (the backbone)."""
    if key in ("query_embed.weight", "input_proj.weight", "input_proj.bias"):
        return key
    if key in ("fc.W", "fc.b"):
        return {"fc.W": "fc.weight", "fc.b": "fc.bias"}[key]
    if key.startswith("transformer.decoder.norm."):
        return "decoder_norm." + key.removeprefix("transformer.decoder.norm.")
    match = _LAYER_KEY.fullmatch(key)
    if match is None:
        return None
    part, index, rest = match.groups()
    for old, new in _RENAMES[part].items():
        if rest.startswith(old):
            return f"{part}.{index}.{new}{rest.removeprefix(old)}"
    return None


def query2label_from_reference(
    state_dict: Mapping[str, torch.Tensor], num_classes: int, **config: Any  # noqa: ANN401 - head kwargs
) -> Query2LabelHead:
    """Build a ``reference``-style head holding the authors' weights, in eval mode.

    Args:
        state_dict: Their full model's state dict (``transformer.*``, ``query_embed.weight``, ``fc.W``,
            ``fc.b``, ``input_proj.*`` when present; ``module.`` prefixes and backbone keys ignored).
            A checkpoint file: :func:`read_reference_checkpoint`.
        num_classes: Number of labels ``L``.
        **config: :class:`Query2LabelHead` arguments; the defaults are :data:`REFERENCE_CONFIG` with
            the widths and layer counts read from the weights (the head count cannot be read: 4 unless
            given).

    Returns:
        The head: called on a ``B x C x H x W`` map it returns the reference's ``B x L`` logits.

    Raises:
        SpmlError: Weights that do not fit (missing or unexpected keys, wrong shapes).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "query_embed.weight" not in sd:
        raise SpmlError("not a Query2Label state dict (no query_embed.weight)")
    d_model = int(sd["query_embed.weight"].shape[1])
    layers = {part: {int(m.group(2)) for k in sd if (m := _LAYER_KEY.fullmatch(k)) and m.group(1) == part}
              for part in ("encoder", "decoder")}
    inferred: dict[str, Any] = {
        "d_model": d_model,
        "encoder_layers": len(layers["encoder"]),
        "decoder_layers": len(layers["decoder"]),
    }
    if "transformer.decoder.layers.0.linear1.weight" in sd:
        inferred["dim_feedforward"] = int(sd["transformer.decoder.layers.0.linear1.weight"].shape[0])
    num_features = int(sd["input_proj.weight"].shape[1]) if "input_proj.weight" in sd else d_model
    settings = {**REFERENCE_CONFIG, **inferred, **config}
    if settings.get("style") != "reference":
        raise SpmlError("query2label_from_reference builds the reference style only")
    if any(".self_attn." in k and k.startswith("transformer.decoder.") for k in sd):
        raise SpmlError("these weights keep decoder self-attention (the reference's keep_*_self_attn_dec options), which spml does not build")
    head = Query2LabelHead(num_features, num_classes, **settings)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = _map_reference_key(key)
        if name is not None:
            mapped[name] = value.reshape(value.shape[1:]) if key in ("fc.W", "fc.b") else value
    try:
        head.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise SpmlError(f"reference weights do not fit the Query2Label head: {str(err).splitlines()[0][:300]}") from None
    return head.eval()
