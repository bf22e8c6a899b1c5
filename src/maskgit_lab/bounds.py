"""The bounds every number the suite reads must keep, in one place: config fields (checked
by ``config.load_config``) and command-line options (``errors.ArgumentParser``) alike.

Every integer is a count, a size, an index or a seed: at least 0, seeds at most 2^32 - 1
(what NumPy and Lightning accept), everything else at most ``MAX_COUNT``. Every float is
finite: no setting of the suite means infinity or NaN.
"""

from __future__ import annotations

import math

SEED_MAX = 2**32 - 1
MAX_COUNT = 10**9


def int_problem(value: int, name: str) -> str | None:
    """Why the integer setting ``name`` cannot be ``value`` (None when it can)."""
    top = SEED_MAX if "seed" in name.rsplit(".", 1)[-1].lower() else MAX_COUNT
    return None if 0 <= value <= top else f"{name}={value} is out of range: it must lie in 0..{top}"


def float_problem(value: float, name: str) -> str | None:
    """Why the float setting ``name`` cannot be ``value`` (None when it can)."""
    return None if math.isfinite(value) else f"{name}={value} must be a finite number"
