"""The networks of the Halton successor (valeoai/Halton-MaskGIT) as released, parameter for
parameter, so its state dicts load strictly (names and shapes: docs/paper_scale.md).

``HaltonMaskGITTransformer`` (``transformer.layout: halton-maskgit``): a DiT-like encoder: token
and learned position embeddings, register tokens appended, blocks of RMSNorm + adaLN
modulation from the class embedding (shift, scale, gate for attention and feed-forward),
attention with RMS-normalised queries and keys and no biases, SwiGLU feed-forward; a final
adaLN RMSNorm and a head tied to the token embedding with its own bias. Its vocabulary: codes
0..K-1 and the mask K (token embedding of K + 1 rows, K + 1 outputs, of which the suite keeps
the K codes), classes 0..C-1 and the null class C (class embedding of C + 1 rows).

``LlamaGenVQ`` (``tokenizer.layout: llamagen``): the LlamaGen VQ tokenizer (FoundationVision/
LlamaGen) the successor uses: the taming blocks in ``conv_blocks`` / ``mid`` lists, attention
at the lowest resolution only, an l2-normalised codebook. Inference only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskgit_lab.models.transformer import TokenTransformer, TransformerConfig
from maskgit_lab.models.vqgan import (
    AttnBlock,
    Downsample,
    ResnetBlock,
    TokenizerConfig,
    Upsample,
    _norm,
    swish,
)

Tensor = torch.Tensor
SWIGLU_MULTIPLE = 256  # the feed-forward width: 2/3 of mlp_dim rounded up to a multiple of it


def swiglu_hidden(mlp_dim: int) -> int:
    return SWIGLU_MULTIPLE * ((int(2 * mlp_dim / 3) + SWIGLU_MULTIPLE - 1) // SWIGLU_MULTIPLE)


class RMSNorm(nn.Module):
    """x / rms(x) (in fp32), times ``weight`` and plus ``bias`` where they exist."""

    def __init__(self, dim: int, weight: bool = True, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        if self.weight is not None:
            y = self.weight * y
        return y + self.bias if self.bias is not None else y


class QKNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim, weight=False)
        self.key_norm = RMSNorm(dim, weight=False)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.qk_norm = QKNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q = self.qk_norm.query_norm(self.wq(x))
        k = self.qk_norm.key_norm(self.wk(x))
        v = self.wv(x)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(mlp_dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.ln1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = RMSNorm(dim)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mlp(cond).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.ln1(x), shift1, scale1))
        return x + gate2[:, None] * self.ff(modulate(self.ln2(x), shift2, scale2))


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))


class AdaNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(dim, weight=True, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.mlp(cond).chunk(2, dim=1)
        return modulate(self.norm_final(x), shift, scale)


class HaltonMaskGITTransformer(TokenTransformer):
    """forward(codes [B, N] with mask_id at unknown positions, labels [B] (C: the null class))
    -> logits [B, N, K] over the K codes (or [M, K] at ``positions``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        cfg = self.cfg
        d, side = cfg.dim, math.isqrt(cfg.num_tokens)
        if side * side != cfg.num_tokens:
            raise ValueError(f"the halton-maskgit layout needs a square token grid, got {cfg.num_tokens} tokens")
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, d)
        self.tok_emb = nn.Embedding(cfg.codebook_size + 1, d)
        self.pos_emb = nn.Embedding(cfg.num_tokens, d)
        self.transformer = Encoder(d, cfg.depth, cfg.heads, cfg.mlp_dim)
        self.last_norm = AdaNorm(d)
        self.head = nn.Linear(d, cfg.codebook_size + 1)
        self.head.weight = self.tok_emb.weight  # tied, as released
        if cfg.registers:
            self.reg_tokens = nn.Embedding(cfg.registers, d)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, codes: Tensor, labels: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        b, n = codes.shape
        if n != self.cfg.num_tokens:
            raise ValueError(f"expected {self.cfg.num_tokens} tokens per image, got {n}")
        if labels is None:
            labels = torch.full((b,), self.cfg.num_classes, dtype=torch.long, device=codes.device)
        cond = self.cls_emb(labels)
        x = self.tok_emb(codes) + self.pos_emb.weight[None]
        if self.cfg.registers:
            x = torch.cat([x, self.reg_tokens.weight[None].expand(b, -1, -1)], 1)
        for block in self.transformer.layers:
            x = block(x, cond)
        logits = self.head(self.last_norm(x[:, :n], cond))[..., : self.cfg.codebook_size]
        return logits if positions is None else logits[positions]


class _Stage(nn.Module):
    """One resolution of the LlamaGen encoder or decoder: ``res`` blocks, ``attn`` blocks (at
    the lowest resolution only), and a ``downsample`` / ``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def _mid(channels: int, cfg: TokenizerConfig) -> nn.ModuleList:
    g = cfg.norm_groups
    return nn.ModuleList([ResnetBlock(channels, channels, cfg.dropout, g), AttnBlock(channels, g),
                          ResnetBlock(channels, channels, cfg.dropout, g)])


class LlamaGenEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        mults, g = cfg.ch_mult, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        cin = cfg.ch
        for i, m in enumerate(mults):
            stage, cout = _Stage(), cfg.ch * m
            for _ in range(cfg.num_res_blocks):
                stage.res.append(ResnetBlock(cin, cout, cfg.dropout, g))
                cin = cout
                if i == len(mults) - 1:
                    stage.attn.append(AttnBlock(cin, g))
            if i != len(mults) - 1:
                stage.downsample = Downsample(cin)
            self.conv_blocks.append(stage)
        self.mid = _mid(cin, cfg)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i, stage in enumerate(self.conv_blocks):
            h = stage(h)
            if i != len(self.conv_blocks) - 1:
                h = stage.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class LlamaGenDecoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        mults, g = cfg.ch_mult, cfg.norm_groups
        cin = cfg.ch * mults[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin, cfg)
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(len(mults))):
            stage, cout = _Stage(), cfg.ch * mults[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.res.append(ResnetBlock(cin, cout, cfg.dropout, g))
                cin = cout
                if level == len(mults) - 1:
                    stage.attn.append(AttnBlock(cin, g))
            if level != 0:
                stage.upsample = Upsample(cin)
            self.conv_blocks.append(stage)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i, stage in enumerate(self.conv_blocks):
            h = stage(h)
            if i != len(self.conv_blocks) - 1:
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class NormalizedCodebook(nn.Module):
    """The codebook looked up by l2-normalised vectors: the code of z is the nearest
    normalised entry to z / |z|."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def entries(self) -> Tensor:
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def nearest(self, z: Tensor) -> Tensor:
        """[B, D, h, w] -> codes [B, h, w]."""
        b, d, h, w = z.shape
        flat = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=-1)
        e = self.entries()
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None] - 2 * flat @ e.t()
        return dist.argmin(1).reshape(b, h, w)

    def lookup(self, codes: Tensor) -> Tensor:
        """[B, h, w] -> [B, D, h, w]."""
        return self.entries()[codes].permute(0, 3, 1, 2).contiguous()


class LlamaGenVQ(nn.Module):
    """Encoder -> quant_conv -> normalised codebook -> post_quant_conv -> decoder, the
    tokenizer interface of ``VQGAN`` (encode, decode). Images in [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = LlamaGenEncoder(cfg)
        self.decoder = LlamaGenDecoder(cfg)
        self.quantize = NormalizedCodebook(cfg.codebook_size, cfg.codebook_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, C, H, W] in [-1, 1] -> codes [B, h, w] (long)."""
        return self.quantize.nearest(self.quant_conv(self.encoder(images)))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, h, w] (long) -> images [B, C, H, W], clamped to [-1, 1]."""
        z = self.quantize.lookup(codes).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z)).clamp(-1, 1)
