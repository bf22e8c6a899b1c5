"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1].

Each schedule is a pure function of the ratio ``r`` and of ``num_tokens`` (N, the number
of tokens that can be masked; only ``logarithmic`` and ``exponential`` depend on it).
Definitions follow the official MaskGIT release; every value is clipped to [1e-6, 1].
``arccos`` is the PyTorch reproduction's default and is offered as an extra.

The same functions drive training (how many tokens to mask) and decoding (how many
tokens stay masked after each step), so the formula lives in exactly one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from maskgit_lab.errors import ConfigError

Tensor = torch.Tensor
ScheduleFn = Callable[[Tensor, int], Tensor]

_CLIP_MIN = 1e-6


def _linear(r: Tensor, n: int) -> Tensor:
    return 1.0 - r


def _square(r: Tensor, n: int) -> Tensor:
    return 1.0 - r**2


def _cubic(r: Tensor, n: int) -> Tensor:
    return 1.0 - r**3


def _square_root(r: Tensor, n: int) -> Tensor:
    return 1.0 - torch.sqrt(r)


def _cosine(r: Tensor, n: int) -> Tensor:
    return torch.cos(r * (math.pi / 2))


def _logarithmic(r: Tensor, n: int) -> Tensor:
    # -log2(0) is +inf: the clip below turns it into "everything masked".
    return -torch.log2(r) / math.log2(n)


def _exponential(r: Tensor, n: int) -> Tensor:
    return 1.0 - torch.exp2(-math.log2(n) * (1.0 - r))


def _arccos(r: Tensor, n: int) -> Tensor:
    return torch.arccos(r) / (math.pi / 2)


# Order of the paper's Table 3, then the reproduction's extra.
SCHEDULES: dict[str, ScheduleFn] = {
    "exponential": _exponential,
    "cubic": _cubic,
    "square": _square,
    "cosine": _cosine,
    "linear": _linear,
    "square_root": _square_root,
    "logarithmic": _logarithmic,
    "arccos": _arccos,
}

# Names used by the official code and common spellings; they map onto the names above.
ALIASES: dict[str, str] = {
    "exp": "exponential",
    "pow3": "cubic",
    "pow2": "square",
    "cos": "cosine",
    "sqrt": "square_root",
    "log": "logarithmic",
    "acos": "arccos",
}

# Labels as printed in the paper's tables.
PAPER_LABELS: dict[str, str] = {
    "exponential": "Exponential",
    "cubic": "Cubic",
    "square": "Square",
    "cosine": "Cosine",
    "linear": "Linear",
    "square_root": "Square root",
    "logarithmic": "Logarithmic",
    "arccos": "Arccos (extra)",
}


def canonical_name(name: str) -> str:
    """Return the canonical schedule name for ``name`` (aliases accepted).

    Raises ConfigError listing the valid names when ``name`` is unknown.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in SCHEDULES:
        valid = ", ".join(SCHEDULES)
        raise ConfigError(f"unknown mask schedule {name!r}; valid schedules: {valid}")
    return key


def gamma(name: str, r: Tensor | float, num_tokens: int) -> Tensor:
    """Fraction of tokens masked at ratio ``r`` under schedule ``name``.

    Args:
        name: schedule name (see ``SCHEDULES``; aliases such as ``cos`` accepted).
        r: ratio(s) in [0, 1], any shape.
        num_tokens: N, the number of maskable tokens (>= 2).

    Returns:
        float64 tensor of the same shape as ``r``, values in [1e-6, 1].
    """
    fn = SCHEDULES[canonical_name(name)]
    if num_tokens < 2:
        raise ConfigError(f"num_tokens must be at least 2 for a mask schedule, got {num_tokens}")
    r_t = torch.as_tensor(r, dtype=torch.float64)
    if torch.any((r_t < 0) | (r_t > 1)):
        raise ValueError("schedule ratio r must lie in [0, 1]")
    return fn(r_t, num_tokens).clamp(_CLIP_MIN, 1.0)
