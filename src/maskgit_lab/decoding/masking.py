"""Training-time masking for masked visual token modeling."""

from __future__ import annotations

import torch

from maskgit_lab.decoding.schedules import gamma

Tensor = torch.Tensor


def random_mask(
    batch: int, num_tokens: int, schedule: str, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu", blank_share: float = 0.0,
) -> Tensor:
    """Per example draw r ~ U[0, 1) and mask exactly ceil(gamma(r) * N) uniformly chosen tokens.

    ``blank_share`` = q > 0: rows with r < q are masked whole (the grid every decoding starts
    from), the rest get gamma((r - q) / (1 - q)), so they follow the schedule as before. The
    same uniform decides both: q = 0 draws exactly the masks it always did.
    Returns a bool mask [batch, num_tokens] (True = masked); every row masks at least one token.
    """
    if not 0 <= blank_share < 1:
        raise ValueError(f"blank_share must lie in [0, 1), got {blank_share}")
    r = torch.rand(batch, generator=generator, device=device, dtype=torch.float64).cpu()
    blank = r < blank_share
    if blank_share:
        r = ((r - blank_share) / (1 - blank_share)).clamp(0, 1)
    n_mask = torch.ceil(gamma(schedule, r, num_tokens) * num_tokens).long().clamp(1, num_tokens)
    n_mask[blank] = num_tokens
    scores = torch.rand(batch, num_tokens, generator=generator, device=device)
    order = scores.argsort(dim=1)
    rank_masked = torch.arange(num_tokens, device=device)[None, :] < n_mask.to(device)[:, None]
    return torch.zeros(batch, num_tokens, dtype=torch.bool, device=device).scatter(1, order, rank_masked)
