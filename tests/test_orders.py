"""Which positions a decode reveals (confidence, random, Halton), the guidance and temperature
schedules, and each upstream sampler's conventions against an independent re-statement of its
loop (the presets)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from maskgit_lab.decoding.orders import (
    fixed_order,
    halton_order,
    masked_counts,
    mean_nearest_distance,
    radical_inverse,
)
from maskgit_lab.decoding.sampler import DecodeConfig, decode, guidance_at, token_temperature
from maskgit_lab.errors import ConfigError

K = 12  # codes
NULL = 99  # the null class


class Logits:
    """Deterministic logits [B, N, K] that depend on the grid (how many tokens are revealed,
    which codes), the position and the class (the null class differs), so that order,
    guidance and temperature all change the result."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.base = torch.randn(n, K, generator=g) * 2
        self.per_code = torch.randn(K + 1, K, generator=g)
        self.uncond = torch.randn(n, K, generator=g)

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        known = (tokens < K).float()
        context = (self.per_code[tokens.clamp(max=K)] * known[..., None]).mean(1, keepdim=True)  # [B, 1, K]
        out = self.base[None] + context
        if labels is not None:
            null = (labels == NULL).float()[:, None, None]
            out = out + null * self.uncond[None] + (1 - null) * 0.1 * labels.float()[:, None, None]
        return out


def test_halton_order_covers_every_cell_once_exactly():
    for rows, cols in ((8, 8), (16, 16), (5, 7), (9, 9), (24, 24), (64, 64), (1, 3)):
        order = halton_order(rows, cols)
        assert sorted(order) == list(range(rows * cols)), (rows, cols)
    # the first points, from exact fractions: point i is (radical inverse in base 2, in base 3)
    assert [radical_inverse(i, 2) for i in (1, 2, 3, 6)] == [(1, 2), (1, 4), (3, 4), (3, 8)]
    assert [radical_inverse(i, 3) for i in (1, 2, 3, 4)] == [(1, 3), (2, 3), (1, 9), (4, 9)]
    seen, want, i = set(), [], 0
    while len(want) < 20:  # re-stated with Fraction: row = floor(h2 * 9), col = floor(h3 * 9)
        i += 1
        h = [Fraction(0), Fraction(0)]
        for j, base in enumerate((2, 3)):
            k, f = i, Fraction(1, base)
            while k:
                k, digit = divmod(k, base)
                h[j] += digit * f
                f /= base
        cell = math.floor(h[0] * 9) * 9 + math.floor(h[1] * 9)
        if cell not in seen:
            seen.add(cell)
            want.append(cell)
    assert list(halton_order(9, 9)[:20]) == want


def test_halton_order_matches_the_successors_float_construction_where_floats_are_exact():
    """The successor builds its order from 10,000 float points; on sides that are powers of two
    (its 16 x 16 and 32 x 32 grids) every product is exact, and the orders agree."""
    def naive(base, count):
        n, d, out = 0, 1, []
        for _ in range(count):
            x = d - n
            if x == 1:
                n, d = 1, d * base
            else:
                y = d // base
                while x <= y:
                    y //= base
                n = (base + 1) * y - x
            out.append(n / d)
        return out

    for side in (8, 16, 32):
        pts = np.floor(np.stack([naive(2, 10_000), naive(3, 10_000)], 1) * side)
        _, first = np.unique(pts, return_index=True, axis=0)
        upstream = [int(pts[i, 0]) * side + int(pts[i, 1]) for i in sorted(first)]
        assert list(halton_order(side, side)) == upstream


def test_halton_prefixes_are_spread_more_evenly_than_random_ones():
    """The first k positions of the Halton order keep farther apart than k random positions:
    their mean nearest-neighbour distance beats 99 % of random draws of as many positions."""
    side = 16
    coords = torch.tensor([[p // side, p % side] for p in halton_order(side, side)], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for k in (16, 32, 64):
        halton = mean_nearest_distance(coords[:k])
        random = [mean_nearest_distance(coords[torch.randperm(side * side, generator=gen)[:k]]) for _ in range(200)]
        assert halton > np.percentile(random, 99), (k, halton, np.percentile(random, 99))


@pytest.mark.parametrize("kind", ["random", "halton"])
def test_fixed_orders_reveal_every_unknown_position_once_and_keep_known_tokens(kind):
    side, bsz = 6, 5
    tokens = torch.full((bsz, side * side), K)
    tokens[:, :7] = torch.arange(7)  # known in every row
    tokens[2, 20:30] = 3  # more known in one row
    for convention in ("official", "increments", "revealed"):
        cfg = DecodeConfig(steps=5, schedule="arccos", order=kind, halton_shift=True, mask_convention=convention)
        res = decode(Logits(side * side), tokens, K, cfg, torch.Generator().manual_seed(3), return_history=True)
        assert (res.tokens < K).all()
        known = tokens < K
        assert torch.equal(res.tokens[known], tokens[known]), "known tokens never change"
        masked_after = (res.states == K).sum(-1)  # [T, B]
        for b in range(bsz):
            u0 = int((~known[b]).sum())
            assert masked_after[:, b].tolist() == list(masked_counts(convention, "arccos", 5, u0))
            # each step writes exactly the positions it reveals, each unknown position once
            first = [int(((res.states[:, b] != K) & ~known[b]).float().argmax(0)[p]) for p in (~known[b]).nonzero()[:, 0]]
            assert sorted(np.bincount(first, minlength=5).tolist()) == sorted(
                np.diff([0, *[u0 - m for m in masked_counts(convention, "arccos", 5, u0)]]).tolist())


def test_the_halton_order_skips_known_positions_and_continues_over_the_unknown_ones():
    side = 8
    tokens = torch.full((1, side * side), K)
    known = torch.tensor(halton_order(side, side)[:10:2])  # some early Halton cells are known
    tokens[0, known] = 1
    order = fixed_order("halton", tokens == K, (side, side), torch.Generator())
    want = [p for p in halton_order(side, side) if p not in set(known.tolist())]
    assert order[0, : len(want)].tolist() == want and set(order[0, len(want):].tolist()) == set(known.tolist())
    # the random shift rolls the whole order: each row's order is the base order rolled
    shifted = fixed_order("halton", torch.ones(3, side * side, dtype=torch.bool), (side, side),
                          torch.Generator().manual_seed(1), shift=True)
    base = torch.tensor(halton_order(side, side))
    for row in shifted:
        offsets = [k for k in range(side * side) if torch.equal(torch.roll(base, k), row)]
        assert len(offsets) == 1


@pytest.mark.parametrize("order", ["confidence", "random", "halton"])
def test_decodes_are_byte_identical_per_seed(order):
    n = 64
    cfg = DecodeConfig(steps=6, order=order, halton_shift=True, guidance_weight=1.0, guidance_ramp="cosine")
    tokens = torch.full((4, n), K)
    labels = torch.arange(4)
    runs = [decode(Logits(n), tokens, K, cfg, torch.Generator().manual_seed(s), labels=labels, null_label=NULL).tokens
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_guidance_and_temperature_schedules_follow_their_formulas():
    t = 9
    for ramp, want in (("constant", lambda s: 2.0), ("linear", lambda s: 2.0 * s / 8),
                       ("cosine", lambda s: 2.0 * (1 - math.cos(math.pi * s / 8)) / 2),
                       ("interval", lambda s: 2.0 if 0.25 <= s / 8 <= 0.5 else 0.0)):
        cfg = DecodeConfig(steps=t, guidance_weight=2.0, guidance_ramp=ramp, guidance_interval=(0.25, 0.5))
        assert [guidance_at(cfg, s) for s in range(t)] == pytest.approx([want(s) for s in range(t)]), ramp
    lin = DecodeConfig(steps=5, temperature_schedule="linear", temperature_min=0.5, temperature_max=1.5,
                       temperature_power=2.0, temperature_warmup=2)
    want = [(0.5 + 0.25 * s) ** 2 * (0.5 if s < 2 else 1.0) for s in range(5)]
    assert [token_temperature(lin, s) for s in range(5)] == pytest.approx(want, rel=1e-6)
    assert [token_temperature(DecodeConfig(softmax_temperature=0.7), s) for s in range(3)] == pytest.approx([0.7] * 3)


@pytest.mark.parametrize("change, message", [
    ({"order": "spiral"}, "unknown order 'spiral'; valid: confidence, random, halton"),
    ({"guidance_ramp": "interval", "guidance_interval": (0.5, 1.5)}, "guidance_interval must be two numbers"),
    ({"guidance_interval": (0.8, 0.2)}, "guidance_interval must be two numbers a <= b in [0, 1]"),
    ({"softmax_temperature": -1.0}, "softmax_temperature must be a finite number >= 0"),
    ({"temperature_max": float("inf")}, "temperature_max must be a finite number >= 0"),
    ({"top_k": 13}, "top_k=13 is larger than the codebook (12 codes)"),
    ({"mask_convention": "halton"}, "unknown mask_convention 'halton'; valid: official, increments, revealed"),
    ({"preset": "muse"}, "unknown sampling preset 'muse'; valid: official, maskgit-pytorch, halton-maskgit"),
    ({"preset": "halton-maskgit", "order": "random"}, "sampling preset halton-maskgit sets order='halton'"),
    ({"redraw_revealed": True}, "redraw_revealed goes with a fixed order"),
])
def test_bad_decode_settings_are_one_clear_error(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        DecodeConfig(**change).validated(64, K)


# ---- each upstream's loop, re-stated here from its published code, against the preset


def official_loop(logits_fn, tokens, steps, schedule_fn):
    """google-research/maskgit's decode with draws and choices made deterministic (the most
    probable code, tau = 0): cumulative counts floor(U0 gamma((s+1)/T)) clipped to
    [1, unknown - 1]; confidence log softmax(logits) of the drawn code; known +inf."""
    cur = tokens.clone()
    u0 = (cur == K).sum(1)
    states = []
    for s in range(steps):
        logits = logits_fn(cur, None)
        drawn = logits.argmax(-1)
        unknown = cur == K
        sampled = torch.where(unknown, drawn, cur)
        if s == steps - 1:
            cur = sampled
        else:
            conf = torch.log_softmax(logits, -1).gather(-1, drawn[..., None]).squeeze(-1)
            conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))
            n_mask = torch.floor(u0.double() * schedule_fn((s + 1) / steps)).long()
            n_mask = torch.maximum(torch.ones_like(n_mask), torch.minimum(unknown.sum(1) - 1, n_mask))
            order = conf.argsort(1)
            cur = sampled.clone()
            for b in range(cur.shape[0]):
                cur[b, order[b, : n_mask[b]]] = K
        states.append(cur.clone())
    return cur, torch.stack(states)


def reproduction_loop(logits_fn, tokens, steps, increments, w, r, labels):
    """valeoai/Maskgit-pytorch v1.0's sample(): t_s tokens revealed at step s; guidance
    (1 + w s/(T-1)) c - w s/(T-1) u; prob = softmax(logit * r); the drawn code (here the most
    probable) revealed where its log prob is among the t_s highest of the masked positions."""
    cur = tokens.clone()
    mask = (cur == K).float()
    states = []
    for s, t in enumerate(increments):
        c, u = logits_fn(cur, labels), logits_fn(cur, torch.full_like(labels, NULL))
        ws = w * (s / (steps - 1))
        prob = torch.softmax(((1 + ws) * c - ws * u) * r, -1)
        pred = prob.argmax(-1)
        conf = torch.log(prob.gather(-1, pred[..., None]).squeeze(-1))
        conf[~mask.bool()] = -math.inf
        _, idx = torch.topk(conf, k=t, dim=-1)
        for b in range(cur.shape[0]):
            cur[b, idx[b]] = pred[b, idx[b]]
            mask[b, idx[b]] = 0
        states.append(cur.clone())
    return cur, torch.stack(states)


def successor_loop(logits_fn, tokens, steps, side, w, tmin, tmax, power, warmup, labels, redraw=False):
    """valeoai/Halton-MaskGIT's HaltonSampler: the Halton positions [prev_r, r) written at step s
    (all of [0, r) in its earlier version), r = max(s + 1, int((1 - arccos((s+1)/T)/(pi/2)) N));
    logit = (1 + w) c - w u; prob = softmax(logit * temp_s), temp_s = linspace(min, max, T)[s]
    ** power, halved in the warm-up; the drawn code here the most probable."""
    n = side * side
    order = torch.tensor(halton_order(side, side))
    temperature = torch.linspace(tmin, tmax, steps)
    cur = tokens.clone()
    prev_r, states = 0, []
    for s in range(steps):
        ratio = (s + 1) / steps
        r = 1 - (torch.arccos(torch.tensor(ratio)) / (math.pi * 0.5))
        r = max(s + 1, int(r * n))
        temp = temperature[s] ** power
        if s < warmup:
            temp *= 0.5
        c, u = logits_fn(cur, labels), logits_fn(cur, torch.full_like(labels, NULL))
        pred = torch.softmax(((1 + w) * c - w * u) * temp, -1).argmax(-1)
        where = order[0 if redraw else prev_r:r]
        cur[:, where] = pred[:, where]
        prev_r = r
        states.append(cur.clone())
    return cur, torch.stack(states)


def test_official_preset_is_the_official_loop():
    from maskgit_lab.decoding.schedules import gamma

    n, steps = 64, 8
    tokens = torch.full((3, n), K)
    tokens[1, :9] = 2
    fn = Logits(n, seed=1)
    want, want_states = official_loop(fn, tokens, steps, lambda r: gamma("cosine", torch.tensor(r), n).double())
    cfg = DecodeConfig(steps=steps, preset="official", choice_temperature=0.0, top_k=1)
    res = decode(fn, tokens, K, cfg, torch.Generator().manual_seed(0), return_history=True)
    assert torch.equal(res.states, want_states) and torch.equal(res.tokens, want)


@pytest.mark.parametrize("r, w", [(1.0, 0.0), (2.5, 3.0), (0.6, 1.5)])
def test_maskgit_pytorch_preset_is_the_reproductions_loop(r, w):
    from maskgit_lab.decoding.orders import reveal_increments

    n, steps = 64, 8
    tokens = torch.full((2, n), K)
    labels = torch.tensor([3, 7])
    fn = Logits(n, seed=2)
    want, want_states = reproduction_loop(fn, tokens, steps, reveal_increments("arccos", steps, n, n), w, r, labels)
    cfg = DecodeConfig(steps=steps, schedule="arccos", preset="maskgit-pytorch", softmax_temperature=r,
                       guidance_weight=w, choice_temperature=0.0, top_k=1)
    res = decode(fn, tokens, K, cfg, torch.Generator().manual_seed(0), labels=labels, null_label=NULL,
                 return_history=True)
    assert torch.equal(res.states, want_states) and torch.equal(res.tokens, want)


@pytest.mark.parametrize("redraw", [False, True])
@pytest.mark.parametrize("side, steps, w, temps", [(8, 8, 0.0, (1.0, 1.0, 1.0, 0)), (8, 12, 0.5, (0.8, 1.6, 2.0, 3)),
                                                   (8, 32, 2.0, (1.0, 3.0, 0.5, 1)), (4, 12, 1.0, (1.0, 2.0, 1.0, 0))])
def test_halton_maskgit_preset_is_the_successors_loop(redraw, side, steps, w, temps):
    """On 4 x 4 with 12 steps the early steps reveal their floor of at least s + 1 tokens."""
    tokens = torch.full((2, side * side), K)
    labels = torch.tensor([1, 4])
    fn = Logits(side * side, seed=3)
    tmin, tmax, power, warmup = temps
    want, want_states = successor_loop(fn, tokens, steps, side, w, tmin, tmax, power, warmup, labels, redraw)
    # the preset is the current code; its earlier version (every revealed position drawn again)
    # is the same conventions with redraw_revealed
    conventions = ({"preset": "halton-maskgit"} if not redraw else
                   {"order": "halton", "mask_convention": "revealed", "temperature_convention": "multiply",
                    "temperature_schedule": "linear", "guidance_ramp": "constant", "redraw_revealed": True})
    cfg = DecodeConfig(steps=steps, schedule="arccos", guidance_weight=w, top_k=1, temperature_min=tmin,
                       temperature_max=tmax, temperature_power=power, temperature_warmup=warmup, **conventions)
    res = decode(fn, tokens, K, cfg, torch.Generator().manual_seed(0), labels=labels, null_label=NULL,
                 return_history=True)
    assert torch.equal(res.states, want_states) and torch.equal(res.tokens, want)
