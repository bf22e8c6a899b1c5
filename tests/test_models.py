import math

import lightning as L
import numpy as np
import pytest
import torch
from helpers import SMOKE
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

from maskgit_lab.config import load_config, with_data_sizes
from maskgit_lab.decoding.masking import random_mask
from maskgit_lab.decoding.schedules import gamma
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.lit.tokenizer import TokenizerModule
from maskgit_lab.models.losses import PerceptualLoss
from maskgit_lab.models.transformer import MaskGITTransformer, TransformerConfig
from maskgit_lab.models.vqgan import VQGAN, TokenizerConfig


def small_tokenizer(**kw) -> VQGAN:
    cfg = TokenizerConfig(ch=8, ch_mult=(1, 2, 2), z_channels=8, codebook_size=32, codebook_dim=4,
                          attn_resolutions=(8,), **kw)
    return VQGAN(cfg)


def test_tokenizer_shapes_and_round_trip():
    torch.manual_seed(0)
    model = small_tokenizer().eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    codes = model.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 32
    images = model.decode(codes)
    assert images.shape == x.shape and images.abs().max() <= 1
    # decoding the codes gives exactly the forward pass's reconstruction
    with torch.no_grad():
        rec, q = model(x)
    assert torch.equal(q.codes, codes)
    assert torch.allclose(images, rec.clamp(-1, 1), atol=1e-5)
    # each code is the nearest codebook entry of its latent
    z = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1).reshape(-1, 4)
    d = torch.cdist(z, model.quantize.embedding.weight)
    assert torch.equal(d.argmin(1), codes.flatten())


def test_taming_shape_expressible_by_config():
    cfg = TokenizerConfig(in_channels=3, resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                          attn_resolutions=(16,), z_channels=256, codebook_size=1024, codebook_dim=256)
    with torch.device("meta"):
        model = VQGAN(cfg)
    keys = model.state_dict().keys()
    for k in ("encoder.down.4.attn.1.q.weight", "encoder.down.3.downsample.conv.weight",
              "decoder.up.4.attn.2.proj_out.weight", "decoder.up.1.upsample.conv.weight",
              "encoder.mid.attn_1.k.weight", "quantize.embedding.weight", "post_quant_conv.weight"):
        assert k in keys, k
    assert "encoder.down.4.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert cfg.grid_size == 16 and tuple(model.quantize.embedding.weight.shape) == (1024, 256)


def test_straight_through_gradient_and_dead_code_revival():
    model = small_tokenizer().train()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    rec, q = model(x)
    (rec - x).pow(2).mean().backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0, "gradient must pass the quantizer"
    quant = model.quantize
    quant.window_counts.zero_()
    quant.window_counts[:3] = 5.0
    before = quant.embedding.weight.detach().clone()
    n = quant.revive_dead_codes(torch.Generator().manual_seed(0))
    assert n == 29
    assert float(quant.window_counts.sum()) == 0, "a new counting window starts"
    assert torch.equal(quant.embedding.weight[:3], before[:3])
    assert not torch.equal(quant.embedding.weight[3:], before[3:])
    # revived codes are copies of recent encoder outputs
    flat = quant._last_flat
    revived = quant.embedding.weight[3:].detach()
    assert (revived[:, None, :] == flat[None]).all(-1).any(1).all()


def test_perceptual_loss_plugs_any_feature_net():
    class TwoTaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            h = self.a(x)
            return [h, self.b(h)]

    loss = PerceptualLoss(TwoTaps())
    x = torch.rand(2, 1, 16, 16)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-8)
    assert float(loss(x, torch.rand(2, 1, 16, 16))) > 0
    assert not any(p.requires_grad for p in loss.features.parameters())


def tiny_transformer(**kw) -> MaskGITTransformer:
    cfg = TransformerConfig(preset="tiny", dim=32, depth=2, heads=2, mlp_dim=64, dropout=0.0,
                            codebook_size=20, num_tokens=16, num_classes=5, **kw)
    return MaskGITTransformer(cfg)


@pytest.mark.parametrize("position", ["first", "last"])
def test_transformer_shapes_vocab_and_bidirectional(position):
    torch.manual_seed(0)
    m = tiny_transformer(class_position=position).eval()
    assert m.cfg.vocab_size == 20 + 5 + 2 and m.cfg.mask_id == 20 and m.cfg.null_label == 5
    codes = torch.randint(0, 20, (3, 16))
    labels = torch.tensor([0, 4, 2])
    out = m(codes, labels)
    assert out.shape == (3, 16, 20)
    # bidirectional: changing the last token changes the logits at the first position
    changed = codes.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 20
    assert not torch.allclose(m(changed, labels)[:, 0], out[:, 0])
    # the class conditions the output; None means the null class
    assert not torch.allclose(m(codes, torch.tensor([1, 1, 1])), m(codes, torch.tensor([2, 2, 2])))
    assert torch.allclose(m(codes, None), m(codes, torch.full((3,), 5)))


def test_logits_tied_to_embedding():
    m = tiny_transformer().eval()
    codes = torch.randint(0, 20, (2, 16))
    out = m(codes, torch.tensor([0, 1]))
    with torch.no_grad():
        m.bias[3] += 5.0
    out2 = m(codes, torch.tensor([0, 1]))
    assert torch.allclose(out2[..., 3] - out[..., 3], torch.full_like(out[..., 3], 5.0), atol=1e-5)
    assert m.tok_emb.weight.shape[0] == m.cfg.vocab_size


def test_random_mask_exact_counts():
    n_tok = 64
    gen = torch.Generator().manual_seed(7)
    mask = random_mask(500, n_tok, "cosine", gen)
    replay = torch.Generator().manual_seed(7)
    r = torch.rand(500, generator=replay, dtype=torch.float64)
    want = torch.ceil(gamma("cosine", r, n_tok) * n_tok).long().clamp(1, n_tok)
    assert torch.equal(mask.sum(1), want)
    # positions are uniform: every position gets masked at a similar rate
    rate = mask.float().mean(0)
    assert float(rate.max() - rate.min()) < 0.2
    assert math.isclose(float(mask.float().mean()), float(want.float().mean()) / n_tok, rel_tol=1e-6)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_mask_counts_follow_the_schedules_distribution(schedule):
    """Goodness of fit of the masked count against its distribution written out here: with
    r ~ U[0, 1) and k = ceil(N gamma(r)), P(k <= j) = P(gamma(r) <= j / N), i.e. for cosine
    1 - (2/pi) arccos(j/N) and for linear j/N; and every position equally likely to be masked."""
    n_tok, rows = 64, 20000
    mask = random_mask(rows, n_tok, schedule, torch.Generator().manual_seed(11))
    counts = np.bincount(mask.sum(1).numpy(), minlength=n_tok + 1)[1:]
    cdf = np.array([1 - 2 / math.pi * math.acos(j / n_tok) if schedule == "cosine" else j / n_tok
                    for j in range(n_tok + 1)])
    expected = np.diff(cdf) * rows
    # pool the sparse tail into bins of at least 5 expected rows
    edges, acc = [0], 0.0
    for j, e in enumerate(expected):
        acc += e
        if acc >= 5:
            edges.append(j + 1)
            acc = 0.0
    edges[-1] = n_tok
    observed = [counts[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    want = [expected[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    assert stats.chisquare(observed, want).pvalue > 0.001
    per_position = mask.sum(0).numpy()
    assert stats.chisquare(per_position).pvalue > 0.001


def _fit_fixed_batch(module, batch, steps, callbacks=()):
    loader = DataLoader(TensorDataset(*[b.repeat(steps, *[1] * (b.dim() - 1)) for b in batch]),
                        batch_size=batch[0].shape[0])
    # One epoch of ``steps`` batches: with two optimizers Lightning's max_steps counts both.
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                        callbacks=list(callbacks))
    trainer.fit(module, loader)


def test_tokenizer_module_lowers_loss_on_fixed_batch():
    torch.manual_seed(0)
    cfg = load_config(SMOKE, ["tokenizer_train.max_steps=40", "tokenizer_train.lr=0.002"])
    module = TokenizerModule(cfg)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = torch.zeros(16, dtype=torch.long)

    def loss():
        with torch.no_grad():
            rec, q = module.model(x)
        return float((rec - x).abs().mean())

    before = loss()
    _fit_fixed_batch(module, (x, y), 40)
    assert int(module.batches_done) == 40
    assert loss() < 0.8 * before


def test_tokenizer_module_gan_step_runs():
    cfg = load_config(SMOKE, ["tokenizer_train.disc_weight=0.5", "tokenizer_train.disc_start=1",
                              "tokenizer_train.max_steps=3"])
    module = TokenizerModule(cfg)
    disc_before = [p.detach().clone() for p in module.disc.parameters()]
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    _fit_fixed_batch(module, (x, torch.zeros(8, dtype=torch.long)), 3)
    assert int(module.batches_done) == 3
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.disc.parameters(), strict=True))


@pytest.mark.parametrize("gan", [False, True])
def test_tokenizer_learning_rate_warms_up_then_decays(gan):
    """tokenizer_train.warmup_steps / min_lr_ratio: the rate of every optimizer (the
    discriminator's too) rises linearly, then falls on a half cosine to lr * min_lr_ratio at
    max_steps; the defaults keep it constant."""
    extra = ["tokenizer_train.disc_weight=0.5", "tokenizer_train.disc_start=1"] if gan else []
    cfg = load_config(SMOKE, ["tokenizer_train.max_steps=12", "tokenizer_train.lr=0.01",
                              "tokenizer_train.warmup_steps=2", "tokenizer_train.min_lr_ratio=0.1", *extra])
    module = TokenizerModule(cfg)
    seen: list[list[float]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *_):
            seen.append([g["lr"] for o in trainer.optimizers for g in o.param_groups])

    x = torch.rand(4, 1, 32, 32) * 2 - 1
    _fit_fixed_batch(module, (x, torch.zeros(4, dtype=torch.long)), 12, callbacks=[Record()])
    assert len(seen) == 12 and all(len(r) == (2 if gan else 1) for r in seen)
    assert all(len(set(r)) == 1 for r in seen), "both optimizers follow the same schedule"
    lrs = [r[0] for r in seen]
    assert lrs[0] == pytest.approx(0.005) and lrs[1] == pytest.approx(0.01)  # warm-up: (step + 1) / 2
    # cosine from step 2 to 12: halfway (step 7) at the midpoint of 0.01 and 0.001
    assert lrs[7] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[2] == pytest.approx(0.01)  # the cosine starts at the full rate
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)), "decreasing after the warm-up"
    assert lrs[-1] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    constant = TokenizerModule(load_config(SMOKE, ["tokenizer_train.lr=0.01"]))
    opt = constant.configure_optimizers()
    assert isinstance(opt, torch.optim.Optimizer), "no schedule by default: a constant rate"


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_mvtm_module_lowers_loss_on_fixed_batch(ema):
    torch.manual_seed(0)
    cfg = load_config(SMOKE, ["transformer_train.max_steps=60", "transformer_train.lr=0.003",
                              f"transformer_train.ema={ema}", "transformer_train.label_smoothing=0.0"])
    cfg = with_data_sizes(cfg, codebook_size=12, num_tokens=16, num_classes=3)
    module = MVTMModule(cfg)
    labels = torch.arange(24) % 3
    # Learnable structure: each code is a function of the class and the position.
    codes = (labels[:, None] * 5 + torch.arange(16)[None, :]) % 12

    def loss():
        m = module.model.eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            mask = random_mask(24, 16, "cosine", gen)
            logits = m(codes.masked_fill(mask, 12), labels)
        return float(torch.nn.functional.cross_entropy(logits[mask], codes[mask]))

    before = loss()
    _fit_fixed_batch(module, (codes, labels), 60)
    assert loss() < 0.7 * before
    if ema:
        diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(module.ema.parameters(), module.model.parameters(), strict=True))
        assert diff > 0 and module.inference_model is module.ema


def _reference_encoder(model: MaskGITTransformer) -> torch.nn.Module:
    """The same network built from torch's own nn.TransformerEncoderLayer (the layout the suite
    used before its SDPA blocks), loaded with ``model``'s weights."""
    c = model.cfg
    layer = torch.nn.TransformerEncoderLayer(c.dim, c.heads, c.mlp_dim, c.dropout, activation="gelu",
                                             batch_first=True, norm_first=c.norm_first, layer_norm_eps=1e-12)
    enc = torch.nn.TransformerEncoder(layer, c.depth, norm=torch.nn.LayerNorm(c.dim, eps=1e-12) if c.norm_first
                                      else None, enable_nested_tensor=False)
    enc.load_state_dict({k[len("blocks."):]: v for k, v in model.state_dict().items() if k.startswith("blocks.")})
    return enc.eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_sdpa_blocks_match_torch_transformer_encoder(norm_first):
    cfg = TransformerConfig(preset="tiny", codebook_size=32, num_tokens=16, num_classes=3, dropout=0.0,
                            norm_first=norm_first)
    torch.manual_seed(0)
    model = MaskGITTransformer(cfg).eval()
    ref = _reference_encoder(model)
    x = torch.randn(5, 17, model.cfg.dim)
    with torch.no_grad():
        assert torch.allclose(model.blocks(x), ref(x), atol=1e-5)
    # same seed, same initial weights as torch's layer would give (parameter order and init kept)
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(model.cfg.dim, model.cfg.heads, model.cfg.mlp_dim, 0.0,
                                             activation="gelu", batch_first=True, norm_first=norm_first,
                                             layer_norm_eps=1e-12)
    ours = model.blocks.layers[0]
    torch.manual_seed(0)
    fresh = type(ours)(model.cfg.dim, model.cfg.heads, model.cfg.mlp_dim, 0.0, norm_first)
    assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))


def test_explicit_attention_path_matches_the_fused_kernel():
    from maskgit_lab.models.transformer import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    for causal in (False, True):
        out = attention(qb, kb, vb, is_causal=causal)  # bf16 with gradients on the CPU: explicit form
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.allclose(out.float(), ref, atol=3e-2)
        out.float().sum().backward()
        assert qb.grad is not None and torch.isfinite(qb.grad.float()).all()


def test_reduced_precision_inference_attention_is_explicit_on_short_sequences_and_matches():
    from maskgit_lab.models import transformer as T

    torch.manual_seed(0)
    for length in (9, T.EXPLICIT_INFERENCE_MAX_LEN + 1):
        q, k, v = (torch.randn(3, 4, length, 8) for _ in range(3))
        mask = torch.rand(length, length) > 0.3
        mask[:, 0] = True
        with torch.inference_mode():
            for kwargs in ({}, {"is_causal": True}, {"attn_mask": mask}):
                out = T.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **kwargs)
                ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
                assert out.dtype == torch.bfloat16
                assert torch.allclose(out.float(), ref, atol=3e-2)
