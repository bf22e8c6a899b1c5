"""Raster-order sampling from the autoregressive baseline, one token per forward pass.

Two decoders with the same output for the same generator:
    "recompute"  runs the whole prefix through the model at every step, as the
                 autoregressive VQGAN transformer the paper timed MaskGIT against;
    "kv-cache"   feeds only the newest token, reusing the keys and values of earlier ones.
Each step: logits / temperature, keep the top-k and the top-p nucleus, then draw with the
Gumbel-max trick from the explicit generator (no global random state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskgit_lab.errors import ConfigError
from maskgit_lab.models.ar import ARTransformer

Tensor = torch.Tensor

AR_DECODERS = ("recompute", "kv-cache")


@dataclass(frozen=True)
class ARDecodeConfig:
    """temperature: divides the logits (0 = greedy argmax); top_k: keep the k most likely
    codes (0 = all); top_p: keep the smallest set whose probability reaches p (1 = all)."""

    decoder: str = "kv-cache"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def validated(self, codebook_size: int) -> ARDecodeConfig:
        if self.decoder not in AR_DECODERS:
            raise ConfigError(f"unknown AR decoder {self.decoder!r}; valid: {', '.join(AR_DECODERS)}")
        if not self.temperature >= 0:
            raise ConfigError(f"AR temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_k <= codebook_size:
            raise ConfigError(f"top_k={self.top_k} must lie in 0..{codebook_size} (0 keeps every code)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must lie in (0, 1]")
        return self


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """[B, K] logits with everything outside the top-k / top-p set at -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a code when the codes ranked above it already reach p (the first always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: Tensor, cfg: ARDecodeConfig, generator: torch.Generator) -> Tensor:
    """[B, K] logits -> [B] codes."""
    logits = logits.float()
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-20, 1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


@torch.inference_mode()
def ar_decode(model: ARTransformer, labels: Tensor, cfg: ARDecodeConfig, generator: torch.Generator) -> Tensor:
    """Sample N codes per image for class ``labels`` [B] -> codes [B, N] (N forward passes)."""
    cfg = cfg.validated(model.cfg.codebook_size)
    b, n = labels.shape[0], model.cfg.num_tokens
    codes = torch.empty(b, n, dtype=torch.long, device=labels.device)
    if cfg.decoder == "recompute":
        for i in range(n):
            codes[:, i] = sample_next(model(codes[:, :i], labels)[:, -1], cfg, generator)
        return codes
    dtype = next(model.parameters()).dtype
    cache = model.new_cache(b, labels.device, dtype)
    ids = model.class_tokens(labels, b, labels.device)[:, None]
    for i in range(n):
        codes[:, i] = sample_next(model.step(ids, cache)[:, -1], cfg, generator)
        ids = codes[:, i : i + 1]
    return codes


@torch.inference_mode()
def ar_nll(model: ARTransformer, codes: Tensor, labels: Tensor, batch_size: int = 500) -> dict:
    """Exact NLL of held-out ``codes`` [M, N] in raster order: nats per token."""
    device = next(model.parameters()).device
    total, correct, count = 0.0, 0, 0
    for c, y in zip(codes.split(batch_size), labels.split(batch_size), strict=True):
        c, y = c.to(device).long(), y.to(device)
        logits = model(c[:, :-1], y).float()
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), c.flatten(), reduction="sum"))
        correct += int((logits.argmax(-1) == c).sum())
        count += c.numel()
    return {"nll": total / count, "next_token_accuracy": correct / count, "tokens": count,
            "n_sequences": int(codes.shape[0])}
