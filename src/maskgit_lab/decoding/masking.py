"""Training-time masking for masked visual token modeling."""

from __future__ import annotations

import torch

from maskgit_lab.decoding.schedules import gamma

Tensor = torch.Tensor


def random_mask(
    batch: int, num_tokens: int, schedule: str, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Per example draw r ~ U[0, 1) and mask exactly ceil(gamma(r) * N) uniformly chosen tokens.

    Returns a bool mask [batch, num_tokens] (True = masked); every row masks at least one token.
    """
    r = torch.rand(batch, generator=generator, device=device, dtype=torch.float64).cpu()
    n_mask = torch.ceil(gamma(schedule, r, num_tokens) * num_tokens).long().clamp(1, num_tokens)
    scores = torch.rand(batch, num_tokens, generator=generator, device=device)
    order = scores.argsort(dim=1)
    rank_masked = torch.arange(num_tokens, device=device)[None, :] < n_mask.to(device)[:, None]
    return torch.zeros(batch, num_tokens, dtype=torch.bool, device=device).scatter(1, order, rank_masked)
