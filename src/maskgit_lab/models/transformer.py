"""The bidirectional transformer of MaskGIT (masked visual token modeling).

Vocabulary layout (as in the released PyTorch weights): codes 0..K-1, mask = K,
class c = K + 1 + c, null class (label dropped for guidance) = K + 1 + C; V = K + C + 2.
Input sequence: N code tokens plus one class token (first, as in the paper, or last, as
in the reproduction). Output: logits over the K codes for the N code positions, tied to
the token embedding plus a learned bias per vocabulary entry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from maskgit_lab.errors import ConfigError

Tensor = torch.Tensor


@dataclass
class TransformerConfig:
    """Size and layout of the transformer; ``preset`` fills the size fields by name."""

    preset: str = "tiny"
    dim: int = 0
    depth: int = 0
    heads: int = 0
    mlp_dim: int = 0
    dropout: float = 0.1
    norm_first: bool = True
    class_position: Literal["first", "last"] = "first"
    # "maskgit": this module; "maskgit-pytorch" / "halton-maskgit": the released networks of the
    # PyTorch reproduction and of its Halton successor (models.released, models.halton)
    layout: str = "maskgit"
    registers: int = 1  # halton-maskgit: learned register tokens appended to the sequence
    # Filled from the tokenizer and dataset when the model is built:
    codebook_size: int = 0
    num_tokens: int = 0
    num_classes: int = 0

    def resolved(self) -> TransformerConfig:
        """Return a copy with the preset's sizes filling any field left at 0."""
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown transformer preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        out = replace(
            self,
            dim=self.dim or p["dim"],
            depth=self.depth or p["depth"],
            heads=self.heads or p["heads"],
            mlp_dim=self.mlp_dim or p["mlp_dim"],
        )
        if out.dim % out.heads:
            raise ConfigError(f"transformer dim {out.dim} is not divisible by heads {out.heads}")
        if out.layout not in LAYOUTS:
            raise ConfigError(f"unknown transformer layout {out.layout!r}; valid: {', '.join(LAYOUTS)}")
        if out.class_position not in ("first", "last"):
            raise ConfigError(f"class_position must be 'first' or 'last', got {out.class_position!r}")
        return out

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def null_label(self) -> int:
        """Label index meaning "no class" (its token id is K + 1 + C)."""
        return self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2


# Transformer layouts by name; models.registry maps each to its class.
LAYOUTS = ("maskgit", "maskgit-pytorch", "halton-maskgit")


# Named sizes. "base" is the paper's 24 x 768 model (16 heads as in the official config).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 128, "depth": 4, "heads": 4, "mlp_dim": 512},
    "small": {"dim": 256, "depth": 6, "heads": 8, "mlp_dim": 1024},
    "medium": {"dim": 512, "depth": 12, "heads": 8, "mlp_dim": 2048},
    "base": {"dim": 768, "depth": 24, "heads": 16, "mlp_dim": 3072},
}


class TokenTransformer(nn.Module):
    """What every transformer over the token vocabulary shares (MaskGIT's, the released
    layout's, the autoregressive baseline's): the resolved config with its sizes checked,
    class-token ids and the parameter count."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        if min(cfg.codebook_size, cfg.num_tokens) <= 0 or cfg.num_classes < 0:
            raise ConfigError("transformer needs codebook_size, num_tokens > 0 and num_classes >= 0")
        self.cfg = cfg

    def class_tokens(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """[B] labels (None, or the null label, for unconditional) -> [B] token ids."""
        if labels is None:
            labels = torch.full((batch,), self.cfg.null_label, device=device, dtype=torch.long)
        return labels.long() + self.cfg.codebook_size + 1

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# Longest sequence for which explicit attention beats the fused kernel in reduced precision
# on the CPU without gradients (docs/speed.md).
EXPLICIT_INFERENCE_MAX_LEN = 128


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, is_causal: bool = False,
              attn_mask: Tensor | None = None) -> Tensor:
    """Multi-head attention over [B, heads, L, head_dim] queries, keys and values.

    PyTorch's fused kernel (``scaled_dot_product_attention``), except in reduced precision on
    the CPU, where explicit matmuls are faster (docs/speed.md):
    - with gradients (the fused kernel's backward is slow there); the softmax is taken in fp32;
    - without gradients, for sequences up to ``EXPLICIT_INFERENCE_MAX_LEN`` keys (the fused
      kernel's blocking does not pay on short sequences); the softmax reads and writes the
      reduced dtype (computed in fp32 inside the kernel).
    All compute softmax(q k^T / sqrt(d) + mask) v.
    """
    reduced_cpu = q.device.type == "cpu" and q.dtype != torch.float32
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not reduced_cpu or (not training and k.shape[-2] > EXPLICIT_INFERENCE_MAX_LEN):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    if not training:
        probs = scores.softmax(-1)
        return (F.dropout(probs, dropout_p) if dropout_p > 0 else probs) @ v
    probs = F.dropout(scores.float().softmax(-1), dropout_p).to(v.dtype)
    return probs @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so its state dicts load unchanged, computed by ``attention``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # nn.MultiheadAttention's initialisation, in its order (same seed, same weights)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, D] -> [B, L, D]."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    """A transformer encoder layer with ``nn.TransformerEncoderLayer``'s parameter names and
    numerics (GELU, LayerNorm eps 1e-12; pre-norm when ``norm_first``, else post-norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.p, self.norm_first = dropout, norm_first

    def _ff(self, x: Tensor) -> Tensor:
        h = F.dropout(F.gelu(self.linear1(x)), self.p, self.training)
        return F.dropout(self.linear2(h), self.p, self.training)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm_first:
            x = x + F.dropout(self.self_attn(self.norm1(x)), self.p, self.training)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + F.dropout(self.self_attn(x), self.p, self.training))
        return self.norm2(x + self._ff(x))


class Encoder(nn.Module):
    """``depth`` blocks (copies of one freshly initialised block, as ``nn.TransformerEncoder``
    makes them) and, for pre-norm blocks, a final LayerNorm."""

    def __init__(self, block: EncoderBlock, depth: int, norm: nn.LayerNorm | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(block) for _ in range(depth))
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x if self.norm is None else self.norm(x)


class MaskGITTransformer(TokenTransformer):
    """forward(codes [B, N] with mask_id at unknown positions, labels [B]) -> logits [B, N, K]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        cfg = self.cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.num_tokens + 1, d))
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_drop = nn.Dropout(cfg.dropout)
        layer = EncoderBlock(d, cfg.heads, cfg.mlp_dim, cfg.dropout, cfg.norm_first)
        self.blocks = Encoder(layer, cfg.depth, nn.LayerNorm(d, eps=1e-12) if cfg.norm_first else None)
        # Output head: Dense -> GELU -> LN, then logits against the tied embedding + bias.
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.tok_emb.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, codes: Tensor, labels: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """-> logits [B, N, K]; with ``positions`` (bool [B, N]) only theirs, [M, K] in row-major
        order: training needs the masked positions' logits alone, and the K-way head is a
        quarter of the step at K = 1024."""
        b, n = codes.shape
        if n != self.cfg.num_tokens:
            raise ValueError(f"expected {self.cfg.num_tokens} tokens per image, got {n}")
        cls = self.class_tokens(labels, b, codes.device)[:, None]
        first = self.cfg.class_position == "first"
        seq = torch.cat([cls, codes], 1) if first else torch.cat([codes, cls], 1)
        x = self.emb_drop(self.emb_norm(self.tok_emb(seq) + self.pos_emb))
        x = self.blocks(x)
        x = x[:, 1:] if first else x[:, :-1]
        if positions is not None:
            x = x[positions]
        h = self.head(x)
        k = self.cfg.codebook_size
        return h @ self.tok_emb.weight[:k].t() + self.bias[:k]
