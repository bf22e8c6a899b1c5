"""Masked-token negative log-likelihood on held-out tokens (the suite's NLL).

For each held-out code grid, draw r ~ U[0, 1), mask exactly ceil(gamma(r) N) tokens with
the given schedule (the training masking), and average the cross-entropy of the true codes
at the masked positions. Monte-Carlo over r and the mask with a fixed seed: the same
model, tokens, schedule and seed always give the same number. Reported in nats per masked
token, pooled over all masked tokens of all draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskgit_lab.decoding.masking import random_mask
from maskgit_lab.decoding.schedules import canonical_name
from maskgit_lab.models.transformer import MaskGITTransformer

Tensor = torch.Tensor


@torch.inference_mode()
def masked_token_nll(
    transformer: MaskGITTransformer,
    codes: Tensor,
    labels: Tensor,
    schedule: str,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 500,
) -> dict:
    """NLL of ``codes`` [M, N] given ``labels`` [M] under ``schedule``'s training masking."""
    schedule = canonical_name(schedule)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    device = next(transformer.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total, count, correct = 0.0, 0, 0
    tcfg = transformer.cfg
    for _ in range(draws):
        for c, y in zip(codes.split(batch_size), labels.split(batch_size), strict=True):
            c, y = c.to(device).long(), y.to(device)
            mask = random_mask(c.shape[0], c.shape[1], schedule, gen, device)
            logits = transformer(c.masked_fill(mask, tcfg.mask_id), y).float()
            total += float(F.cross_entropy(logits[mask], c[mask], reduction="sum"))
            correct += int((logits[mask].argmax(-1) == c[mask]).sum())
            count += int(mask.sum())
    return {"nll": total / count, "masked_accuracy": correct / count, "masked_tokens": count,
            "schedule": schedule, "draws": draws, "seed": seed, "n_sequences": int(codes.shape[0])}
