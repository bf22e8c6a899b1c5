"""Which positions a decode reveals, and how many after each step: pure functions of the
grid, the schedule and an explicit random generator.

Counts (``masked_counts``) follow one of three conventions for a row with U0 unknown tokens:

- ``official``: after step s, floor(U0 * gamma((s+1)/T)) stay masked, clipped so that each
  step reveals at least one token and leaves at least one masked until the last;
- ``increments`` (the PyTorch reproduction): each step reveals a fixed number, gamma
  evaluated on r = 1 ... 0 normalised to sum to U0 (``reveal_increments``);
- ``revealed`` (the Halton successor): after step s, max(s + 1, int((1 - gamma((s+1)/T)) * U0))
  are revealed (float32 arithmetic, as there), at most U0.

Orders for the positions (``fixed_order``): ``random`` (a permutation per row) and
``halton`` (the 2-D Halton sequence over the grid, ``halton_order``, optionally shifted
cyclically per row); known positions are skipped and the order continues over the unknown
ones. The third order, ``confidence``, is decided step by step in the sampler.
"""

from __future__ import annotations

import functools
import math

import torch

from maskgit_lab.decoding.schedules import gamma

Tensor = torch.Tensor

ORDERS = ("confidence", "random", "halton")
MASK_CONVENTIONS = ("official", "increments", "revealed")


def radical_inverse(i: int, base: int) -> tuple[int, int]:
    """The base-``base`` radical inverse of ``i`` as an exact fraction (numerator, denominator):
    the digits of i mirrored behind the point (i = 6 = 110 in base 2 -> 0.011 = 3/8)."""
    num, den = 0, 1
    while i:
        i, digit = divmod(i, base)
        num, den = num * base + digit, den * base
    return num, den


@functools.lru_cache(maxsize=64)
def halton_order(rows: int, cols: int) -> tuple[int, ...]:
    """Every cell of a rows x cols grid once, as flat indices (row * cols + col), in the order
    of the 2-D Halton sequence: point i = 1, 2, ... is (radical inverse of i in base 2, in
    base 3), its row floor(h2 * rows) and column floor(h3 * cols) computed exactly; repeats
    are dropped (the first kept) and points are drawn until every cell is covered."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a grid needs at least one row and one column, got {rows} x {cols}")
    seen: dict[int, None] = {}
    i = 0
    while len(seen) < rows * cols:
        i += 1
        n2, d2 = radical_inverse(i, 2)
        n3, d3 = radical_inverse(i, 3)
        seen.setdefault((n2 * rows // d2) * cols + n3 * cols // d3, None)
    return tuple(seen)


def fixed_order(kind: str, unknown: Tensor, grid: tuple[int, int], generator: torch.Generator,
                shift: bool = False) -> Tensor:
    """[B, N] positions per row in the order they are revealed: the row's unknown positions
    first (in ``kind``'s order), then its known ones (never revealed).

    kind: ``random`` (a uniform permutation per row) or ``halton`` (``halton_order`` of the
    grid; ``shift``: rolled by a uniform offset in 0..N-1 per row, drawn from ``generator``).
    """
    bsz, n = unknown.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold the {n} tokens of a row")
    device = unknown.device
    if kind == "random":
        rank = torch.rand(bsz, n, generator=generator, device=device)
    elif kind == "halton":
        base = torch.tensor(halton_order(*grid), device=device)
        rank = torch.empty(n, device=device, dtype=torch.long)
        rank[base] = torch.arange(n, device=device)  # each position's place in the order
        rank = rank.expand(bsz, n)
        if shift:
            offset = torch.randint(0, n, (bsz, 1), generator=generator, device=device)
            rank = (rank + offset) % n  # torch.roll of the order by the offset
        rank = rank.double()
    else:
        raise ValueError(f"unknown fixed order {kind!r}; valid: random, halton")
    # unknown positions first, each group in the order's ranks
    return (rank + (~unknown).double() * (n + 1)).argsort(dim=1)


@functools.lru_cache(maxsize=4096)
def reveal_increments(schedule: str, steps: int, unknown: int, num_tokens: int) -> tuple[int, ...]:
    """Tokens revealed at each step under the "increments" convention.

    Weights gamma(r) on the grid r = 1, ..., 0 (T points, as in the reproduction) are
    normalised to sum to ``unknown`` and rounded; every step reveals at least one token
    and the last step takes the remainder. Where rounding overshoots, the largest earlier
    increments give tokens back, so the total is exactly ``unknown``. When fewer tokens
    than steps are unknown, the first ``unknown`` steps reveal one each.
    """
    if unknown <= 0:
        return (0,) * steps
    if unknown <= steps:
        return tuple([1] * unknown + [0] * (steps - unknown))
    grid = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    w = gamma(schedule, grid, num_tokens)
    n = torch.round(w / w.sum() * unknown).clamp(min=1).long().tolist()
    head = n[:-1]
    while sum(head) > unknown - 1:
        i = max(range(len(head)), key=lambda j: head[j])
        head[i] -= 1
    return tuple(head + [unknown - sum(head)])


@functools.lru_cache(maxsize=4096)
def masked_counts(convention: str, schedule: str, steps: int, unknown: int) -> tuple[int, ...]:
    """Tokens still masked after each of the ``steps`` steps of a row with ``unknown``
    unknown tokens (the last is 0), under ``convention`` (module docstring). Schedules that
    depend on the number of maskable tokens take ``unknown``, as the official code does."""
    if unknown <= 0:
        return (0,) * steps
    n = max(unknown, 2)
    if convention == "increments":
        return tuple(int(unknown - c) for c in torch.tensor(reveal_increments(schedule, steps, unknown, n)).cumsum(0))
    ratios = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    if convention == "official":
        target = torch.floor(unknown * gamma(schedule, ratios, n)).long().tolist()
        out, left = [], unknown
        for s in range(steps):
            left = 0 if s == steps - 1 else min(left, max(1, min(left - 1, target[s])))
            out.append(left)
        return tuple(out)
    if convention == "revealed":
        out = []
        for s in range(steps):
            frac = float(1 - gamma(schedule, torch.tensor((s + 1) / steps, dtype=torch.float32), n))
            revealed = min(unknown, max(s + 1, int(torch.tensor(frac, dtype=torch.float32) * unknown)))
            out.append(0 if s == steps - 1 else unknown - revealed)
        return tuple(out)
    raise ValueError(f"unknown mask convention {convention!r}; valid: {', '.join(MASK_CONVENTIONS)}")


def mean_nearest_distance(points: Tensor) -> float:
    """The mean distance from each of ``points`` [k, 2] to its nearest other point (a spread
    measure: larger is more even)."""
    d = torch.cdist(points.double(), points.double())
    d.fill_diagonal_(math.inf)
    return float(d.min(dim=1).values.mean())
