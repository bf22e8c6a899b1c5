"""Importing the released MaskGIT-PyTorch weights: state dicts with exactly the released
names (at small sizes) saved in both file formats, loaded through the user-facing command,
checked against a forward pass written out by hand here; strict and safe loading."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from maskgit_lab import weights
from maskgit_lab.checkpoints import load_model, load_models
from maskgit_lab.models.vqgan import VQGAN

CONFIG = "experiments/imagenet256.yaml"
SMALL = ["data.image_size=16", "tokenizer.resolution=16", "tokenizer.ch=32", "tokenizer.ch_mult=[1,2,2]",
         "tokenizer.num_res_blocks=1", "tokenizer.attn_resolutions=[4]", "tokenizer.z_channels=8",
         "tokenizer.codebook_size=16", "tokenizer.codebook_dim=8", "transformer.dim=32", "transformer.depth=2",
         "transformer.heads=4", "transformer.mlp_dim=64", "sweep.steps=[4]", "sweep.tune_max_steps=8",
         "sweep.n=8", "sweep.tune_n_small=4"]
D, DEPTH, HEADS, MLP, K, C, N = 32, 2, 4, 64, 16, 3, 16  # N: 4 x 4 tokens
V = K + 1 + C + 1


def released_transformer_state(seed=0) -> dict:
    """The released .pth's model_state_dict names and shapes (docs/paper_scale.md), random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=g)

    sd = {"tok_emb.weight": r(V, D, scale=0.5), "pos_emb": r(1, N + 1, D, scale=0.5), "bias": r(N + 1, V)}
    for name, kind in (("first_layer.0", "ln"), ("first_layer.2", "lin"), ("first_layer.4", "ln"),
                       ("first_layer.6", "lin"), ("last_layer.0", "ln"), ("last_layer.2", "lin"),
                       ("last_layer.4", "ln")):
        sd[f"{name}.weight"] = r(D, offset=1.0) if kind == "ln" else r(D, D)
        sd[f"{name}.bias"] = r(D)
    for i in range(DEPTH):
        p = f"transformer.layers.{i}"
        sd |= {f"{p}.0.norm.weight": r(D, offset=1.0), f"{p}.0.norm.bias": r(D),
               f"{p}.0.fn.mha.in_proj_weight": r(3 * D, D), f"{p}.0.fn.mha.in_proj_bias": r(3 * D),
               f"{p}.0.fn.mha.out_proj.weight": r(D, D), f"{p}.0.fn.mha.out_proj.bias": r(D),
               f"{p}.1.norm.weight": r(D, offset=1.0), f"{p}.1.norm.bias": r(D),
               f"{p}.1.fn.net.0.weight": r(MLP, D), f"{p}.1.fn.net.0.bias": r(MLP),
               f"{p}.1.fn.net.3.weight": r(D, MLP), f"{p}.1.fn.net.3.bias": r(D)}
    return sd


def reference_forward(sd: dict, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The released forward written out in float64: codes then the class token; LN -> Linear
    -> GELU -> LN -> Linear; pre-norm attention and MLP blocks; LN -> Linear -> GELU -> LN;
    logits against the embedding plus the per-position bias; first N positions, K codes."""
    w = {k: v.double() for k, v in sd.items()}

    def ln(x, name, eps):
        return F.layer_norm(x, (D,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

    def lin(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    seq = torch.cat([codes, (labels + K + 1)[:, None]], 1)
    x = w["tok_emb.weight"][seq] + w["pos_emb"]
    h = lin(ln(x, "first_layer.0", 1e-12), "first_layer.2")
    x = lin(ln(F.gelu(h), "first_layer.4", 1e-12), "first_layer.6")
    b, n, _ = x.shape
    dh = D // HEADS
    for i in range(DEPTH):
        p = f"transformer.layers.{i}"
        h = ln(x, f"{p}.0.norm", 1e-5)
        qkv = h @ w[f"{p}.0.fn.mha.in_proj_weight"].T + w[f"{p}.0.fn.mha.in_proj_bias"]
        q, k, v = (t.reshape(b, n, HEADS, dh).transpose(1, 2) for t in qkv.split(D, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        x = x + lin(att.transpose(1, 2).reshape(b, n, D), f"{p}.0.fn.mha.out_proj")
        h = ln(x, f"{p}.1.norm", 1e-5)
        x = x + lin(F.gelu(lin(h, f"{p}.1.fn.net.0")), f"{p}.1.fn.net.3")
    x = ln(F.gelu(lin(ln(x, "last_layer.0", 1e-12), "last_layer.2")), "last_layer.4", 1e-12)
    logits = x @ w["tok_emb.weight"].T + w["bias"]
    return logits[:, :N, :K]


def taming_vqgan_state(cfg) -> dict:
    torch.manual_seed(1)
    sd = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
          for k, v in VQGAN(cfg.tokenizer).state_dict().items()}
    sd.pop("quantize.window_counts")  # taming has no such buffer
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)  # training-only, dropped
    return sd


@pytest.fixture()
def sources(tmp_path):
    from maskgit_lab.config import load_config

    cfg = load_config(CONFIG, SMALL)
    vq_sd = taming_vqgan_state(cfg)
    # An old Lightning checkpoint pickles more than tensors (here an argparse.Namespace).
    torch.save({"state_dict": vq_sd, "global_step": 7, "hyper_parameters": argparse.Namespace(lr=1e-4)},
               tmp_path / "last.ckpt")
    tr_sd = released_transformer_state()
    torch.save({"iter": 3, "global_epoch": 1, "model_state_dict": tr_sd, "optimizer_state_dict": {}},
               tmp_path / "MaskGIT_ImageNet_256.pth")
    return tmp_path, vq_sd, tr_sd


def run(tmp_path, *extra):
    return weights.main(["--config", CONFIG, "--vqgan", str(tmp_path / "last.ckpt"), "--transformer",
                         str(tmp_path / "MaskGIT_ImageNet_256.pth"), "--out-dir", str(tmp_path / "out"),
                         *extra, *SMALL])


def test_import_then_forward_matches_the_hand_written_reference(sources):
    tmp_path, vq_sd, tr_sd = sources
    assert run(tmp_path, "--trust-checkpoint") == 0
    transformer, tok, cfg, meta = load_models(tmp_path / "out" / "transformer.pt")
    assert cfg.transformer.layout == "maskgit-pytorch" and cfg.transformer.num_classes == C
    assert meta["imported"] and transformer.num_parameters() == sum(v.numel() for v in tr_sd.values())
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K + 1, (3, N), generator=g)  # mask id K included
    labels = torch.tensor([0, 2, C])  # C = the null class
    with torch.no_grad():
        ours = transformer(codes, labels).double()
    assert torch.allclose(ours, reference_forward(tr_sd, codes, labels), atol=1e-4)
    # the tokenizer holds the taming weights; its codes are the nearest codebook entries
    tok2, _, _ = load_model(tmp_path / "out" / "tokenizer.pt", "tokenizer")
    assert torch.equal(tok2.quantize.embedding.weight, vq_sd["quantize.embedding.weight"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = tok2.quant_conv(tok2.encoder(x)).permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(tok2.encode(x).flatten(), torch.cdist(z, vq_sd["quantize.embedding.weight"]).argmin(1))


def test_pickled_extras_need_the_trust_flag(sources, capsys):
    tmp_path, _, _ = sources
    with pytest.raises(SystemExit) as exc:
        run(tmp_path)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--trust-checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_plain_tensor_files_load_without_trust(sources):
    tmp_path, vq_sd, _ = sources
    torch.save({"state_dict": vq_sd, "global_step": 7}, tmp_path / "last.ckpt")
    assert run(tmp_path) == 0


@pytest.mark.parametrize("damage,message", [
    (lambda sd: sd.pop("transformer.layers.1.1.fn.net.3.bias"), "missing keys ['transformer.layers.1.1.fn.net.3.bias']"),
    (lambda sd: sd.update({"head.weight": torch.zeros(1)}), "unexpected keys ['head.weight']"),
    (lambda sd: sd.update({"pos_emb": torch.zeros(1, 65, D)}), "pos_emb: (1, 65, 32) vs (1, 17, 32)"),
])
def test_strict_loading_names_every_bad_key(sources, capsys, damage, message):
    tmp_path, vq_sd, tr_sd = sources
    damage(tr_sd)
    torch.save({"model_state_dict": tr_sd}, tmp_path / "MaskGIT_ImageNet_256.pth")
    with pytest.raises(SystemExit):
        run(tmp_path, "--trust-checkpoint")
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_vqgan_of_another_config_is_refused(sources, capsys):
    tmp_path, _, _ = sources
    with pytest.raises(SystemExit):
        weights.main(["--config", CONFIG, "--vqgan", str(tmp_path / "last.ckpt"), "--trust-checkpoint",
                      "--out-dir", str(tmp_path / "out"), *SMALL, "tokenizer.codebook_size=32"])
    assert "quantize.embedding.weight: (16, 8) vs (32, 8)" in capsys.readouterr().err
