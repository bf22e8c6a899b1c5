"""The bidirectional transformer of MaskGIT (masked visual token modeling).

Vocabulary layout (as in the released PyTorch weights): codes 0..K-1, mask = K,
class c = K + 1 + c, null class (label dropped for guidance) = K + 1 + C; V = K + C + 2.
Input sequence: N code tokens plus one class token (first, as in the paper, or last, as
in the reproduction). Output: logits over the K codes for the N code positions, tied to
the token embedding plus a learned bias per vocabulary entry.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
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
    # "maskgit": this module; "maskgit-pytorch": the released MaskGIT-PyTorch weights' layout
    layout: str = "maskgit"
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


LAYOUTS = ("maskgit", "maskgit-pytorch")


def build_transformer(cfg: TransformerConfig) -> nn.Module:
    """The MaskGIT network of ``cfg.layout`` (same call and output either way)."""
    if cfg.layout == "maskgit-pytorch":
        from maskgit_lab.models.released import MaskGITPyTorchTransformer

        return MaskGITPyTorchTransformer(cfg)
    return MaskGITTransformer(cfg)


# Named sizes. "base" is the paper's 24 x 768 model (16 heads as in the official config).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 128, "depth": 4, "heads": 4, "mlp_dim": 512},
    "small": {"dim": 256, "depth": 6, "heads": 8, "mlp_dim": 1024},
    "medium": {"dim": 512, "depth": 12, "heads": 8, "mlp_dim": 2048},
    "base": {"dim": 768, "depth": 24, "heads": 16, "mlp_dim": 3072},
}


class MaskGITTransformer(nn.Module):
    """forward(codes [B, N] with mask_id at unknown positions, labels [B]) -> logits [B, N, K]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        if min(cfg.codebook_size, cfg.num_tokens) <= 0 or cfg.num_classes < 0:
            raise ConfigError("transformer needs codebook_size, num_tokens > 0 and num_classes >= 0")
        self.cfg = cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.num_tokens + 1, d))
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.emb_drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.heads,
            dim_feedforward=cfg.mlp_dim,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=cfg.norm_first,
            layer_norm_eps=1e-12,
        )
        self.blocks = nn.TransformerEncoder(
            layer, cfg.depth, norm=nn.LayerNorm(d, eps=1e-12) if cfg.norm_first else None,
            enable_nested_tensor=False,
        )
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

    def class_tokens(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """[B] labels (None, or the null label, for unconditional) -> [B] token ids."""
        if labels is None:
            labels = torch.full((batch,), self.cfg.null_label, device=device, dtype=torch.long)
        return labels.long() + self.cfg.codebook_size + 1

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        b, n = codes.shape
        if n != self.cfg.num_tokens:
            raise ValueError(f"expected {self.cfg.num_tokens} tokens per image, got {n}")
        cls = self.class_tokens(labels, b, codes.device)[:, None]
        first = self.cfg.class_position == "first"
        seq = torch.cat([cls, codes], 1) if first else torch.cat([codes, cls], 1)
        x = self.emb_drop(self.emb_norm(self.tok_emb(seq) + self.pos_emb))
        x = self.blocks(x)
        x = x[:, 1:] if first else x[:, :-1]
        h = self.head(x)
        k = self.cfg.codebook_size
        return h @ self.tok_emb.weight[:k].t() + self.bias[:k]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
