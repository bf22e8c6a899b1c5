import math

import pytest
import torch

from maskgit_lab.decoding.orders import reveal_increments
from maskgit_lab.decoding.sampler import (
    DecodeConfig,
    _categorical,
    decode,
    takes_positions,
)
from maskgit_lab.decoding.schedules import gamma
from maskgit_lab.errors import ConfigError

K, N, MASK = 16, 36, 16


class FakeLogits:
    """Deterministic logits from (position, label); records every call for inspection."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(11, N, K, generator=g) * 3
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, tokens, labels):
        self.calls.append((tokens.clone(), None if labels is None else labels.clone()))
        lab = torch.zeros(tokens.shape[0], dtype=torch.long) if labels is None else labels
        return self.table[lab]


def run(cfg, tokens=None, labels=None, seed=0, fn=None, history=True, null_label=10):
    fn = fn or FakeLogits()
    tokens = torch.full((4, N), MASK) if tokens is None else tokens
    labels = torch.arange(tokens.shape[0]) % 10 if labels is None else labels
    gen = torch.Generator().manual_seed(seed)
    return decode(fn, tokens, MASK, cfg, gen, labels=labels, null_label=null_label, return_history=history)


def official_counts(unknown0: int, steps: int, schedule: str) -> list[int]:
    """Masked count after each step, straight from the official formula."""
    out, cur = [], unknown0
    for s in range(steps):
        if s == steps - 1:
            cur = 0
        else:
            target = math.floor(unknown0 * float(gamma(schedule, (s + 1) / steps, N)))
            cur = max(1, min(cur - 1, target))
        out.append(cur)
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear", "exponential", "logarithmic", "square_root", "arccos"])
@pytest.mark.parametrize("steps", [1, 2, 8, 12, N])
def test_official_counts_and_full_decode(schedule, steps):
    res = run(DecodeConfig(steps=steps, schedule=schedule))
    assert not (res.tokens == MASK).any(), "no mask may be left after T steps"
    assert res.tokens.min() >= 0 and res.tokens.max() < K
    masked = (res.states == MASK).sum(dim=2)  # [T, B]
    want = torch.tensor(official_counts(N, steps, schedule))
    assert torch.equal(masked, want[:, None].expand_as(masked))


@pytest.mark.parametrize("convention", ["official", "increments"])
def test_each_position_revealed_once_and_kept(convention):
    res = run(DecodeConfig(steps=8, schedule="cosine", mask_convention=convention))
    states = res.states  # [T, B, N]
    revealed_at = torch.full((4, N), -1)
    prev = torch.full((4, N), MASK)
    for t in range(states.shape[0]):
        newly = (prev == MASK) & (states[t] != MASK)
        assert torch.all(revealed_at[newly] == -1)
        revealed_at[newly] = t
        was_known = prev != MASK
        # a revealed token never changes and is never re-masked
        assert torch.equal(states[t][was_known], prev[was_known])
        assert (newly.sum(1) >= 1).all(), "every step reveals at least one token"
        prev = states[t]
    assert (revealed_at >= 0).all()
    assert torch.equal(states[-1], res.tokens)


def test_increments_sum_and_shape():
    for steps in (1, 3, 8, 20, N):
        for schedule in ("arccos", "cosine", "linear", "logarithmic"):
            inc = reveal_increments(schedule, steps, N, N)
            assert sum(inc) == N and len(inc) == steps and min(inc) >= 1
    res = run(DecodeConfig(steps=8, schedule="arccos", mask_convention="increments"))
    masked = (res.states == MASK).sum(dim=2)[:, 0].tolist()
    inc = reveal_increments("arccos", 8, N, N)
    assert masked == [N - sum(inc[: s + 1]) for s in range(8)]


def test_known_tokens_kept_partial_input():
    tokens = torch.full((4, N), MASK)
    known = torch.zeros(N, dtype=torch.bool)
    known[: N // 2] = True
    tokens[:, known] = torch.arange(N // 2) % K
    res = run(DecodeConfig(steps=6), tokens=tokens)
    assert torch.equal(res.tokens[:, known], tokens[:, known])
    assert not (res.tokens == MASK).any()
    # counts follow the formula with U0 = the number unknown at the start
    masked = (res.states == MASK).sum(dim=2)[:, 0].tolist()
    assert masked == official_counts(N // 2, 6, "cosine")


def test_rows_with_different_unknown_counts():
    tokens = torch.full((3, N), MASK)
    tokens[1, :10] = 3
    tokens[2, :] = 5  # nothing to decode
    res = run(DecodeConfig(steps=4), tokens=tokens, labels=torch.tensor([0, 1, 2]))
    assert not (res.tokens == MASK).any()
    assert torch.equal(res.tokens[2], tokens[2])
    assert torch.equal(res.tokens[1, :10], tokens[1, :10])


def test_same_seed_same_output_and_seed_matters():
    cfg = DecodeConfig(steps=8)
    a, b, c = run(cfg, seed=1).tokens, run(cfg, seed=1).tokens, run(cfg, seed=2).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_not_used():
    cfg = DecodeConfig(steps=8)
    torch.manual_seed(0)
    a = run(cfg, seed=3).tokens
    torch.manual_seed(12345)
    b = run(cfg, seed=3).tokens
    assert torch.equal(a, b)


def test_guidance_zero_equals_unguided_and_skips_uncond_pass():
    base = FakeLogits()
    unguided = run(DecodeConfig(steps=8, guidance_weight=0.0), fn=base)
    assert all(len(t) == 4 for t, _ in base.calls), "w = 0 must not run the unconditional pass"
    plain = run(DecodeConfig(steps=8), fn=FakeLogits(), null_label=None)
    assert torch.equal(unguided.tokens, plain.tokens)


def test_guidance_formula():
    fn = FakeLogits()
    labels = torch.tensor([1, 2, 3, 4])
    captured = {}

    def spy(tokens, lab):
        out = fn(tokens, lab)
        captured.setdefault("first", (tokens.clone(), lab.clone()))
        return out

    # softmax_temperature 0 -> argmax, choice temperature 0 -> no noise: fully deterministic
    cfg = DecodeConfig(steps=1, guidance_weight=2.0, guidance_ramp="constant",
                       softmax_temperature=0.0, choice_temperature=0.0)
    res = run(cfg, labels=labels, fn=spy)
    toks, lab = captured["first"]
    assert toks.shape[0] == 8 and torch.equal(lab[4:], torch.full((4,), 10))
    guided = 3.0 * fn.table[labels] - 2.0 * fn.table[10]
    assert torch.equal(res.tokens, guided.argmax(-1))


def test_guidance_requires_null_label():
    with pytest.raises(ConfigError, match="null class"):
        run(DecodeConfig(steps=2, guidance_weight=1.0, guidance_ramp="constant"), null_label=None)


def test_argmax_without_noise_is_most_confident_first():
    cfg = DecodeConfig(steps=2, softmax_temperature=0.0, choice_temperature=0.0, schedule="linear")
    fn = FakeLogits()
    res = run(cfg, fn=fn, labels=torch.zeros(4, dtype=torch.long))
    conf = torch.log_softmax(fn.table[0], -1).max(-1).values  # [N]
    kept = res.states[0, 0] != MASK
    # after step 1 of 2 with linear gamma, the N/2 most confident positions are kept
    assert kept.sum() == N // 2
    assert conf[kept].min() >= conf[~kept].max()


@pytest.mark.parametrize("steps", [0, -1, N + 1])
def test_impossible_steps(steps):
    with pytest.raises(ConfigError, match=f"between 1 and N={N}"):
        run(DecodeConfig(steps=steps))


@pytest.mark.parametrize(
    "field,value,message", [("choice_temperature", -1.0, "choice_temperature must be a finite number >= 0"),
                            ("softmax_temperature", -0.5, "softmax_temperature must be a finite number >= 0"),
                            ("guidance_weight", -2.0, "guidance_weight must be a finite number >= 0"),
                            ("mask_convention", "weird", "valid: official, increments, revealed"),
                            ("schedule", "zigzag", "valid schedules: exponential")]
)
def test_bad_settings(field, value, message):
    with pytest.raises(ConfigError, match=message):
        run(DecodeConfig(**{field: value}))


def test_confidence_from_the_tempered_or_the_model_distribution():
    """Position 0 has two equally likely codes (p = 0.5 at any temperature); position 1 one code
    at model probability 0.4 that temperature 0.2 sharpens to ~1. Whichever is less confident
    is re-masked after step 1 of 2: position 0 under the tempered distribution, position 1
    under the model's."""
    import math

    k = 16
    row0 = torch.full((k,), -1e9)
    row0[:2] = 0.0
    row1 = torch.zeros(k)
    row1[0] = math.log(10.0)  # e^b / (e^b + 15) = 0.4
    logits = torch.stack([row0, row1])[None]

    def fn(tokens, labels):
        return logits.expand(tokens.shape[0], -1, -1)

    masked_after_step1 = {}
    for source in ("tempered", "model"):
        cfg = DecodeConfig(steps=2, schedule="cosine", choice_temperature=0.0, softmax_temperature=0.2,
                           confidence=source)
        res = decode(fn, torch.full((1, 2), k), k, cfg, torch.Generator().manual_seed(0), return_history=True)
        masked_after_step1[source] = (res.states[0, 0] == k).nonzero().flatten().tolist()
    assert masked_after_step1 == {"tempered": [0], "model": [1]}


def test_log_and_exp_schedules_count_from_the_unknown_tokens_of_each_row():
    """On a partially known grid (U0 = 16 of 64 unknown), the logarithmic schedule keeps the
    official counts masked after each of T = 8 steps: floor(U0 * gamma((s+1)/T)) with N = U0,
    clipped to [1, unknown - 1]."""
    k = 8
    start = torch.zeros(2, 64, dtype=torch.long)
    start[0, :16] = k  # row 0: 16 unknown
    start[1, :] = k  # row 1: all 64 unknown

    def fn(tokens, labels):
        return torch.zeros(tokens.shape[0], 64, k)

    cfg = DecodeConfig(steps=8, schedule="logarithmic", choice_temperature=1.0)
    res = decode(fn, start, k, cfg, torch.Generator().manual_seed(0), return_history=True)
    masked = (res.states == k).sum(dim=2)  # [T, B]
    assert masked[:, 0].tolist() == [12, 8, 5, 4, 2, 1, 1, 0]
    assert masked[:, 1].tolist() == [int(64 * g) for g in gamma("logarithmic", torch.arange(1, 8) / 8, 64)] + [0]
    # the history holds log p of each sampled token at the positions unknown before the step
    assert torch.isnan(res.log_probs[0, 0, 16:]).all() and torch.allclose(
        res.log_probs[0, 0, :16], torch.full((16,), -math.log(k)))


class SubsetLogits(FakeLogits):
    """FakeLogits that also answers for given positions only ([M, K], row-major), as the
    suite's transformers do."""

    def __call__(self, tokens, labels, positions=None):
        full = super().__call__(tokens, labels)
        return full if positions is None else full[positions]


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_decoder_asks_for_the_unknown_positions_only_and_decodes_the_same(weight):
    assert takes_positions(SubsetLogits()) and not takes_positions(FakeLogits())
    cfg = DecodeConfig(steps=6, choice_temperature=2.0, guidance_weight=weight)
    tokens = torch.full((4, N), MASK)
    tokens[1, :5] = 3  # a partly known row
    full, sub = FakeLogits(), SubsetLogits()
    a = run(cfg, tokens=tokens.clone(), fn=full)
    b = run(cfg, tokens=tokens.clone(), fn=sub)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.states, b.states)
    assert torch.equal(a.log_probs.nan_to_num(-1), b.log_probs.nan_to_num(-1))


def test_decoder_rejects_a_subset_answer_of_the_wrong_size():
    def bad(tokens, labels, positions=None):
        return torch.zeros(3, K)

    with pytest.raises(ValueError, match="unknown positions"):
        run(DecodeConfig(steps=4), fn=bad)


@pytest.mark.parametrize("k", [1024, 100, 7])
def test_categorical_draws_follow_the_probabilities_and_never_a_zero_one(k):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(k, generator=g) ** 4
    probs[::3] = 0.0  # codes that must never be drawn
    probs = probs / probs.sum()
    m = 200_000
    draws = _categorical(probs.expand(m, k).contiguous(), torch.Generator().manual_seed(1))
    assert draws.min() >= 0 and draws.max() < k
    counts = torch.bincount(draws, minlength=k).double()
    assert counts[probs == 0].sum() == 0
    expected = probs.double() * m
    # every code within 5 binomial standard deviations (plus one count) of its expectation
    assert ((counts - expected).abs() <= 5 * (expected * (1 - probs.double())).sqrt() + 1).all()


def test_categorical_is_the_inverse_cdf_of_its_uniform():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 1024, generator=g, dtype=torch.float64) * 3, -1)
    draws = _categorical(probs, torch.Generator().manual_seed(5))
    u = torch.rand(500, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = torch.searchsorted(probs.cumsum(-1), u * probs.sum(-1, keepdim=True), right=True).squeeze(-1)
    assert torch.equal(draws, ref)
