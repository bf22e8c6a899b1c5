"""Regions of the token grid to regenerate (boxes, sides) and editing as decoding from a
partially known grid: the pure part of image editing (the paper's section 4.3)."""

from __future__ import annotations

import torch

from maskgit_lab.decoding.generate import generate_codes
from maskgit_lab.decoding.sampler import DecodeConfig, DecodeResult
from maskgit_lab.errors import ConfigError

Tensor = torch.Tensor

SIDES = ("left", "right", "top", "bottom")


def box_region(grid: int, box: tuple[float, float, float, float]) -> Tensor:
    """Tokens whose patches overlap ``box`` = (x0, y0, x1, y1), fractions of the width and
    height in [0, 1] -> bool [grid * grid] in raster order (True = regenerate)."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ConfigError(f"box {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of the image)")
    eps = 1e-9  # a box edge on a patch border does not take the neighbouring patch
    c0, c1 = int(x0 * grid + eps), -int(-(x1 * grid - eps) // 1)
    r0, r1 = int(y0 * grid + eps), -int(-(y1 * grid - eps) // 1)
    region = torch.zeros(grid, grid, dtype=torch.bool)
    region[r0:r1, c0:c1] = True
    return region.flatten()


def side_region(grid: int, side: str, fraction: float = 0.5) -> Tensor:
    """The ``fraction`` of the image on one side (outpainting) -> bool [grid * grid]."""
    if side not in SIDES:
        raise ConfigError(f"unknown side {side!r}; valid: {', '.join(SIDES)}")
    if not 0 < fraction < 1:
        raise ConfigError(f"outpainting fraction must lie in (0, 1), got {fraction}")
    f = fraction
    box = {"left": (0, 0, f, 1), "right": (1 - f, 0, 1, 1), "top": (0, 0, 1, f), "bottom": (0, 1 - f, 1, 1)}[side]
    return box_region(grid, box)


def center_box(fraction: float = 0.5) -> tuple[float, float, float, float]:
    """The centred box covering ``fraction`` of the width and of the height (Table 2: 50%)."""
    m = (1 - fraction) / 2
    return (m, m, 1 - m, 1 - m)


@torch.inference_mode()
def edit_codes(transformer, codes: Tensor, region: Tensor, labels: Tensor, config: DecodeConfig,
               generator: torch.Generator, return_history: bool = False) -> DecodeResult:
    """Regenerate the ``region`` ([N] or [B, N] bool) of ``codes`` [B, N] for class ``labels``
    [B]; every token outside the region is kept exactly."""
    if not bool(region.any()):
        raise ConfigError("the region to regenerate covers no token")
    start = codes.masked_fill(region.to(codes.device).expand_as(codes), transformer.cfg.mask_id)
    return generate_codes(transformer, labels, config, generator, return_history, init_tokens=start)
