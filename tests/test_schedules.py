import math

import pytest
import torch

from maskgit_lab.decoding.schedules import SCHEDULES, canonical_name, gamma
from maskgit_lab.errors import ConfigError

N = 64
R = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999]

# The official definitions, written independently of the module under test.
FORMULAS = {
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r**2,
    "cubic": lambda r: 1 - r**3,
    "square_root": lambda r: 1 - math.sqrt(r),
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "logarithmic": lambda r: -math.log2(r) / math.log2(N) if r > 0 else math.inf,
    "exponential": lambda r: 1 - 2 ** (-math.log2(N) * (1 - r)),
    "arccos": lambda r: math.acos(r) / (math.pi / 2),
}


@pytest.mark.parametrize("name", list(FORMULAS))
def test_values_match_formula(name):
    got = gamma(name, torch.tensor(R, dtype=torch.float64), N).tolist()
    want = [min(1.0, max(1e-6, FORMULAS[name](r))) for r in R]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_endpoints_range_and_monotone(name):
    r = torch.linspace(0, 1, 1001, dtype=torch.float64)
    g = gamma(name, r, N)
    # Everything masked at r = 0, except the official exponential, which starts at 1 - 1/N.
    start = 1 - 1 / N if name == "exponential" else 1.0
    assert float(g[0]) == pytest.approx(start)
    assert float(g[-1]) <= 1e-6 + 1e-12  # fully unmasked at r = 1 (clipped at 1e-6)
    assert float(g.min()) >= 1e-6 and float(g.max()) <= 1.0
    assert torch.all(g[1:] <= g[:-1] + 1e-12), "gamma must be non-increasing"


def test_concave_and_convex_shapes():
    r = torch.tensor(0.5)
    # concave schedules mask more than linear in the middle, convex ones less
    for name in ("square", "cubic", "cosine", "exponential"):
        assert float(gamma(name, r, N)) > 0.5
    for name in ("square_root", "logarithmic"):
        assert float(gamma(name, r, N)) < 0.5


def test_aliases_and_unknown():
    assert canonical_name("cos") == "cosine"
    assert canonical_name("Square-Root") == "square_root"
    with pytest.raises(ConfigError, match="valid schedules: exponential, cubic"):
        canonical_name("quadratic")


def test_ratio_out_of_range():
    with pytest.raises(ValueError, match=r"ratio r must lie in \[0, 1\]"):
        gamma("linear", 1.5, N)
