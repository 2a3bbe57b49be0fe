"""Query2Label head (Liu et al. 2021): label queries attend to the spatial feature map.

Facts from the paper and its public code (SlongLiu/query2labels): a 1 x 1 convolution projects the
backbone map to ``d_model`` channels; a DETR-style 2-D sine positional encoding is added to the
keys of every attention over image positions (not to the values); optional Transformer encoder
layers refine the map; decoder layers update one learnable query per class (``Q_0`` = the label
embeddings, ``Q_i = MultiHead(Q_{i-1}, F, F)`` plus self-attention and a feed-forward block); a
group-wise linear layer turns query ``k`` into logit ``k`` with its own weight vector. The defaults
are small (the paper uses d_model 2048, 1 encoder and 2 decoder layers with ResNet-101).
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
        qk = src + pos
        src = self.norm1(src + self.drop(self.attn(qk, qk, src, need_weights=False)[0]))
        return self.norm2(src + self.drop(self.ffn(src)))


class DecoderLayer(nn.Module):
    """Post-norm label-query self-attention, cross-attention to the map (keys + encoding), feed-forward."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _FeedForward(dim, hidden, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = self.norm1(queries + self.drop(self.self_attn(queries, queries, queries, need_weights=False)[0]))
        q = self.norm2(q + self.drop(self.cross_attn(q, memory + pos, memory, need_weights=False)[0]))
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
    ) -> None:
        super().__init__()
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
        self.input_proj = nn.Conv2d(num_features, d_model, kernel_size=1)
        self.query_embed = nn.Embedding(num_classes, d_model)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, hidden, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, hidden, dropout) for _ in range(decoder_layers))
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
        queries = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        for layer in self.decoder:
            queries = layer(queries, memory, pos)
        return queries if pre_logits else self.fc(queries)
