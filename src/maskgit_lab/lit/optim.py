"""Learning-rate schedule shared by the training stages."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Factor on the base learning rate at ``step``: linear warm-up over ``warmup_steps``, then
    a half cosine from 1 down to ``min_ratio`` at ``max_steps`` (held there after it).
    ``min_ratio`` = 1 keeps the rate constant after the warm-up."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
