"""The autoregressive baseline: causality, the KV cache against the full forward, both
decoders giving the same samples, top-k / top-p filtering, the NLL, and its training."""

import math

import pytest
import torch

from maskgit_lab.decoding.ar_sampler import (
    ARDecodeConfig,
    ar_decode,
    ar_nll,
    filter_logits,
    sample_next,
)
from maskgit_lab.errors import ConfigError
from maskgit_lab.models.ar import ARTransformer
from maskgit_lab.models.transformer import MaskGITTransformer, TransformerConfig


def tiny_cfg(**kw) -> TransformerConfig:
    base = dict(preset="tiny", dim=32, depth=2, heads=4, mlp_dim=64, dropout=0.0,
                codebook_size=16, num_tokens=9, num_classes=3)
    return TransformerConfig(**{**base, **kw})


def tiny_ar(dtype=torch.float64) -> ARTransformer:
    torch.manual_seed(0)
    return ARTransformer(tiny_cfg()).to(dtype).eval()


def test_same_size_as_maskgit_and_causal():
    cfg = tiny_cfg()
    ar, mg = ARTransformer(cfg), MaskGITTransformer(cfg)
    # identical network but one positional row (no slot for the last code as input)
    assert ar.num_parameters() == mg.num_parameters() - cfg.dim
    model = tiny_ar()
    codes = torch.randint(0, 16, (2, 8))
    labels = torch.tensor([0, 2])
    logits = model(codes, labels)
    assert logits.shape == (2, 9, 16)
    changed = codes.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16
    other = model(changed, labels)
    # outputs up to position 5 (which predict codes 0..5) do not see code 5; later ones do
    assert torch.equal(logits[:, :6], other[:, :6])
    assert not torch.allclose(logits[:, 6:], other[:, 6:])


def test_kv_cache_matches_full_forward():
    model = tiny_ar()
    codes = torch.randint(0, 16, (3, 8))
    labels = torch.tensor([0, 1, 2])
    full = model(codes, labels)
    cache = model.new_cache(3, "cpu", torch.float64)
    ids = torch.cat([model.class_tokens(labels, 3, codes.device)[:, None], codes], 1)
    # a prefill of 3 positions, then one at a time, then a chunk of 2 after a filled cache
    pieces = [model.step(ids[:, :3], cache)] + [model.step(ids[:, i:i + 1], cache) for i in range(3, 7)]
    pieces.append(model.step(ids[:, 7:9], cache))
    assert cache.length == 9
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-10)
    with pytest.raises(ValueError, match="exceed"):
        model.step(ids[:, :1], cache)


def test_both_decoders_give_the_same_samples():
    model = tiny_ar()
    labels = torch.tensor([0, 1, 2, 1])
    outs = {}
    for decoder in ("recompute", "kv-cache"):
        g = torch.Generator().manual_seed(5)
        outs[decoder] = ar_decode(model, labels, ARDecodeConfig(decoder=decoder, top_k=8), g)
    assert outs["recompute"].shape == (4, 9)
    assert torch.equal(outs["recompute"], outs["kv-cache"])
    g = torch.Generator().manual_seed(6)
    assert not torch.equal(ar_decode(model, labels, ARDecodeConfig(top_k=8), g), outs["kv-cache"])


def test_greedy_decoding_follows_the_argmax():
    model = tiny_ar()
    labels = torch.tensor([1])
    codes = ar_decode(model, labels, ARDecodeConfig(temperature=0.0), torch.Generator())
    logits = model(codes[:, :-1], labels)
    assert torch.equal(logits.argmax(-1), codes)


def test_filters_keep_the_right_sets():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # nucleus: 0.5 < 0.7, 0.5 + 0.3 >= 0.7 -> the first two
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).tolist() == [[True, False, False, False]]
    # sampling never leaves the kept set, and with no filter matches the distribution
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(20000, 4), ARDecodeConfig(top_k=2), g)
    assert set(draws.tolist()) <= {0, 1}
    draws = sample_next(logits.expand(40000, 4), ARDecodeConfig(), g)
    freq = torch.bincount(draws, minlength=4).double() / 40000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("bad,match", [
    (dict(decoder="beam"), "valid: recompute, kv-cache"), (dict(top_k=17), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(temperature=-1.0), "temperature")])
def test_bad_decode_settings_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        ARDecodeConfig(**bad).validated(16)


def test_nll_of_a_uniform_model_is_log_k():
    model = tiny_ar()
    with torch.no_grad():
        for p in model.head[-1].parameters():
            p.zero_()  # the head's LayerNorm output is 0: every logit equals its bias
        model.bias.zero_()
    codes = torch.randint(0, 16, (5, 9))
    out = ar_nll(model, codes, torch.tensor([0, 1, 2, 0, 1]))
    assert out["tokens"] == 45 and math.isclose(out["nll"], math.log(16), rel_tol=1e-6)
