"""The transformer layout of the released MaskGIT-PyTorch ImageNet weights
(``transformer.layout: maskgit-pytorch``), parameter for parameter, so their state dict
loads strictly into it (names and shapes: docs/paper_scale.md).

Differences from ``MaskGITTransformer``: the class token comes last; the embedding goes
through LN -> dropout -> Linear -> GELU -> LN -> dropout -> Linear; pre-norm blocks with
MultiheadAttention's parameters; the head is LN -> dropout -> Linear -> GELU -> LN; the output
bias is learned per position and vocabulary entry. Same vocabulary layout, same call:
forward(codes [B, N], labels [B]) -> logits [B, N, K] over the K codes.
"""

from __future__ import annotations

import torch
from torch import nn

from maskgit_lab.errors import ConfigError
from maskgit_lab.models.transformer import SelfAttention, TokenTransformer, TransformerConfig

Tensor = torch.Tensor


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.mha = SelfAttention(dim, heads, dropout)  # nn.MultiheadAttention's parameters

    def forward(self, x: Tensor) -> Tensor:
        return self.mha(x)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Blocks(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dropout)),
                           PreNorm(dim, FeedForward(dim, mlp_dim, dropout))]) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return x


class MaskGITPyTorchTransformer(TokenTransformer):
    """forward(codes [B, N] with mask_id at unknown positions, labels [B]) -> logits [B, N, K]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        if cfg.class_position != "last":
            raise ConfigError("transformer.layout=maskgit-pytorch puts the class token last: set "
                              "transformer.class_position=last")
        super().__init__(cfg)
        cfg = self.cfg
        d, v, n = cfg.dim, cfg.vocab_size, cfg.num_tokens
        self.tok_emb = nn.Embedding(v, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, n + 1, d))
        self.first_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(cfg.dropout), nn.Linear(d, d), nn.GELU(),
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(cfg.dropout), nn.Linear(d, d))
        self.transformer = Blocks(d, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.dropout)
        self.last_layer = nn.Sequential(
            nn.LayerNorm(d, eps=1e-12), nn.Dropout(cfg.dropout), nn.Linear(d, d), nn.GELU(),
            nn.LayerNorm(d, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(n + 1, v))
        nn.init.trunc_normal_(self.tok_emb.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, codes: Tensor, labels: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        b, n = codes.shape
        if n != self.cfg.num_tokens:
            raise ValueError(f"expected {self.cfg.num_tokens} tokens per image, got {n}")
        seq = torch.cat([codes, self.class_tokens(labels, b, codes.device)[:, None]], 1)
        x = self.first_layer(self.tok_emb(seq) + self.pos_emb)
        x = self.last_layer(self.transformer(x))
        logits = x @ self.tok_emb.weight.t() + self.bias
        logits = logits[:, :n, : self.cfg.codebook_size]
        return logits if positions is None else logits[positions]
