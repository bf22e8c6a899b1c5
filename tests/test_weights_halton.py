"""Importing the Halton successor's networks: a transformer state dict and a LlamaGen VQ state
dict with exactly the released parameter names (at small sizes), loaded through the
user-facing command; the transformer checked against a forward pass written out by hand
here, the tokenizer's codes against an l2-normalised nearest-entry search by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskgit_lab import weights
from maskgit_lab.checkpoints import load_model, load_models

CONFIG = "experiments/halton256.yaml"
D, DEPTH, HEADS, MLP, K, C, SIDE, REG = 32, 2, 4, 96, 16, 3, 4, 1
N = SIDE * SIDE
H = 256  # the released SwiGLU width: 2/3 of MLP rounded up to a multiple of 256
SMALL = ["data.image_size=16", "tokenizer.resolution=16", "tokenizer.ch=32", "tokenizer.ch_mult=[1,2]",
         "tokenizer.num_res_blocks=1", "tokenizer.z_channels=32", "tokenizer.codebook_size=16",
         "tokenizer.codebook_dim=8", "tokenizer.input_size=8", "data.image_size=8", f"transformer.dim={D}",
         f"transformer.depth={DEPTH}", f"transformer.heads={HEADS}", f"transformer.mlp_dim={MLP}",
         "sampling.steps=8", "sweep.steps=[4,8]", "sweep.tune_max_steps=8", "sweep.n=8", "sweep.tune_n_small=4"]


def released_transformer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Halton-MaskGIT's Network/transformer.py state dict names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=g)

    tok = r(K + 1, D, scale=0.5)
    sd = {"cls_emb.weight": r(C + 1, D, scale=0.5), "tok_emb.weight": tok, "pos_emb.weight": r(N, D, scale=0.5),
          "last_norm.norm_final.weight": r(D, offset=1.0), "last_norm.norm_final.bias": r(D),
          "last_norm.mlp.1.weight": r(2 * D, D), "last_norm.mlp.1.bias": r(2 * D),
          "head.weight": tok, "head.bias": r(K + 1), "reg_tokens.weight": r(REG, D, scale=0.5)}
    for i in range(DEPTH):
        p = f"transformer.layers.{i}"
        sd |= {f"{p}.mlp.1.weight": r(6 * D, D), f"{p}.mlp.1.bias": r(6 * D), f"{p}.ln1.weight": r(D, offset=1.0),
               f"{p}.attn.wq.weight": r(D, D), f"{p}.attn.wk.weight": r(D, D), f"{p}.attn.wv.weight": r(D, D),
               f"{p}.attn.wo.weight": r(D, D), f"{p}.ln2.weight": r(D, offset=1.0), f"{p}.ff.w1.weight": r(H, D),
               f"{p}.ff.w2.weight": r(D, H), f"{p}.ff.w3.weight": r(H, D)}
    return sd


def reference_forward(sd, codes, labels):
    """The successor's forward written out in float64: token + position embeddings, register
    tokens appended; per block the class embedding gives (shift, scale, gate) x 2; RMSNorm
    (eps 1e-5); attention on RMS-normalised queries and keys; SwiGLU; the final adaLN RMSNorm
    with weight and bias; the head's K + 1 outputs, of which the K codes are kept."""
    w = {k: v.double() for k, v in sd.items()}

    def rms(x, weight=None, bias=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        y = y * weight if weight is not None else y
        return y + bias if bias is not None else y

    def mod(x, shift, scale):
        return x * (1 + scale[:, None]) + shift[:, None]

    cond = w["cls_emb.weight"][labels]
    x = w["tok_emb.weight"][codes] + w["pos_emb.weight"][None]
    x = torch.cat([x, w["reg_tokens.weight"][None].expand(codes.shape[0], -1, -1)], 1)
    b, n, _ = x.shape
    for i in range(DEPTH):
        p = f"transformer.layers.{i}"
        m = F.silu(cond) @ w[f"{p}.mlp.1.weight"].T + w[f"{p}.mlp.1.bias"]
        s1, c1, g1, s2, c2, g2 = m.chunk(6, 1)
        h = mod(rms(x, w[f"{p}.ln1.weight"]), s1, c1)
        q, k, v = (h @ w[f"{p}.attn.{nm}.weight"].T for nm in ("wq", "wk", "wv"))
        q, k = rms(q), rms(k)
        q, k, v = (t.reshape(b, n, HEADS, D // HEADS).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), -1) @ v
        x = x + g1[:, None] * (att.transpose(1, 2).reshape(b, n, D) @ w[f"{p}.attn.wo.weight"].T)
        h = mod(rms(x, w[f"{p}.ln2.weight"]), s2, c2)
        ff = (F.silu(h @ w[f"{p}.ff.w1.weight"].T) * (h @ w[f"{p}.ff.w3.weight"].T)) @ w[f"{p}.ff.w2.weight"].T
        x = x + g2[:, None] * ff
    shift, scale = (F.silu(cond) @ w["last_norm.mlp.1.weight"].T + w["last_norm.mlp.1.bias"]).chunk(2, 1)
    x = mod(rms(x[:, :N], w["last_norm.norm_final.weight"], w["last_norm.norm_final.bias"]), shift, scale)
    return (x @ w["head.weight"].T + w["head.bias"])[..., :K]


def llamagen_names() -> list[str]:
    """LlamaGen tokenizer_image/vq_model.py parameter names for ch_mult [1, 2], one residual
    block per level (two in the decoder), attention at the lowest resolution, written out."""

    def res(p, shortcut=False):
        names = [f"{p}.{m}.{t}" for m in ("norm1", "conv1", "norm2", "conv2") for t in ("weight", "bias")]
        return names + ([f"{p}.nin_shortcut.weight", f"{p}.nin_shortcut.bias"] if shortcut else [])

    def attn(p):
        return [f"{p}.{m}.{t}" for m in ("norm", "q", "k", "v", "proj_out") for t in ("weight", "bias")]

    def conv(p):
        return [f"{p}.weight", f"{p}.bias"]

    names = conv("encoder.conv_in") + res("encoder.conv_blocks.0.res.0") + conv("encoder.conv_blocks.0.downsample.conv")
    names += res("encoder.conv_blocks.1.res.0", True) + attn("encoder.conv_blocks.1.attn.0")
    names += res("encoder.mid.0") + attn("encoder.mid.1") + res("encoder.mid.2") + conv("encoder.norm_out")
    names += conv("encoder.conv_out") + conv("decoder.conv_in") + res("decoder.mid.0") + attn("decoder.mid.1")
    names += res("decoder.mid.2")
    for j in range(2):  # the lowest resolution first, with attention
        names += res(f"decoder.conv_blocks.0.res.{j}") + attn(f"decoder.conv_blocks.0.attn.{j}")
    names += conv("decoder.conv_blocks.0.upsample.conv") + res("decoder.conv_blocks.1.res.0", True)
    names += res("decoder.conv_blocks.1.res.1") + conv("decoder.norm_out") + conv("decoder.conv_out")
    names += ["quantize.embedding.weight"] + conv("quant_conv") + conv("post_quant_conv")
    return names


@pytest.fixture()
def sources(tmp_path):
    from maskgit_lab.config import load_config
    from maskgit_lab.models.halton import LlamaGenVQ

    cfg = load_config(CONFIG, SMALL)
    shapes = LlamaGenVQ(cfg.tokenizer).state_dict()
    assert sorted(shapes) == sorted(llamagen_names()), "the module's names are LlamaGen's"
    g = torch.Generator().manual_seed(1)
    vq = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in shapes.items()}
    vq["quantize.codebook_used"] = torch.zeros(65536)  # LlamaGen's usage record, not a weight
    torch.save({"model": vq}, tmp_path / "vq_ds16_c2i.pt")
    tr = released_transformer_state()
    torch.save({"iter": 1, "global_epoch": 0, "model_state_dict": tr, "optimizer_state_dict": None},
               tmp_path / "halton.pth")
    return tmp_path, vq, tr


def run(tmp_path, *extra):
    return weights.main(["--config", CONFIG, "--vqgan", str(tmp_path / "vq_ds16_c2i.pt"), "--transformer",
                         str(tmp_path / "halton.pth"), "--out-dir", str(tmp_path / "out"), *SMALL, *extra])


def test_import_then_forward_matches_the_hand_written_reference(sources):
    tmp_path, vq, tr = sources
    assert run(tmp_path) == 0
    transformer, tok, cfg, meta = load_models(tmp_path / "out" / "transformer.pt")
    assert cfg.transformer.layout == "halton-maskgit" and cfg.transformer.num_classes == C
    assert cfg.transformer.registers == REG and meta["imported"]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, K + 1, (3, N), generator=g)  # the mask id K included
    labels = torch.tensor([0, 2, C])  # C: the null class
    with torch.no_grad():
        ours = transformer(codes, labels).double()
    assert ours.shape == (3, N, K)
    assert torch.allclose(ours, reference_forward(tr, codes, labels), atol=1e-4)
    # the tokenizer: the code of each position is the nearest l2-normalised codebook entry
    tok2, _, _ = load_model(tmp_path / "out" / "tokenizer.pt", "tokenizer")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    z = tok2.quant_conv(tok2.encoder(x)).permute(0, 2, 3, 1).reshape(-1, 8)
    e = vq["quantize.embedding.weight"]
    want = (F.normalize(z, dim=-1) @ F.normalize(e, dim=-1).T).argmax(1)
    assert torch.equal(tok2.encode(x).flatten(), want) and tok2.encode(x).shape == (2, SIDE, SIDE)
    assert tok2.decode(tok2.encode(x)).shape == (2, 3, 8, 8)


def test_the_preset_samples_with_the_imported_model(sources):
    from maskgit_lab.decoding.generate import generate_codes

    tmp_path, _, _ = sources
    assert run(tmp_path) == 0
    transformer, _, cfg, _ = load_models(tmp_path / "out" / "transformer.pt")
    assert cfg.sampling.preset == "halton-maskgit" and cfg.sampling.order == "halton"
    res = generate_codes(transformer, torch.tensor([0, 1]), cfg.sampling.validated(N, K), torch.Generator())
    assert res.tokens.shape == (2, N) and (res.tokens < K).all()


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("transformer.layers.1.ff.w3.weight"), "missing keys ['transformer.layers.1.ff.w3.weight']"),
    (lambda sd: sd.update({"in_proj.weight": torch.zeros(D, D, 2, 2)}), "unexpected keys ['in_proj.weight']"),
    (lambda sd: sd.update({"pos_emb.weight": torch.zeros(64, D)}), "pos_emb.weight: (64, 32) vs (16, 32)"),
])
def test_strict_loading_names_every_bad_key_in_one_line(sources, capsys, damage, message):
    tmp_path, _, tr = sources
    damage(tr)
    torch.save({"model_state_dict": tr}, tmp_path / "halton.pth")
    with pytest.raises(SystemExit) as exc:
        run(tmp_path)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_reproduction_file_under_the_successors_layout_is_one_line(sources, capsys):
    from test_weights import released_transformer_state as reproduction_state

    tmp_path, _, _ = sources
    torch.save({"model_state_dict": reproduction_state()}, tmp_path / "halton.pth")
    with pytest.raises(SystemExit) as exc:
        run(tmp_path)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no 'cls_emb.weight'" in err and len(err.strip().splitlines()) == 1


def test_the_llamagen_layout_is_not_trained(fmnist_dir, tmp_path, capsys):
    from maskgit_lab import train

    with pytest.raises(SystemExit) as exc:
        train.main(["tokenizer", "--config", "experiments/fmnist_smoke.yaml", "--no-mlflow", f"data.root={fmnist_dir}",
                    f"runs_dir={tmp_path}", "tokenizer.layout=llamagen"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "tokenizer.layout=llamagen is for imported weights" in err
