"""VQGAN-style tokenizer as plain nn.Modules: encoder, vector quantizer, decoder.

Block structure and parameter names follow the taming-transformers layout
(``down.{i}.block.{j}``, ``mid.attn_1``, ``quant_conv`` ...), so the ImageNet f16-1024
tokenizer is expressible by config alone: ch=128, ch_mult=(1,1,2,2,4), 2 residual blocks,
attention at resolution 16, z_channels=256, codebook 1024 x 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


@dataclass
class TokenizerConfig:
    """Architecture of the tokenizer. Token grid side = input size / 2**(len(ch_mult)-1).

    ``resolution`` is the size the architecture was built for (it places the attention
    blocks); ``input_size`` (0: the same) is the size of the images fed to it. Being
    convolutional, a tokenizer built at 256 runs at 512 and gives a 32x32 grid (the released
    ImageNet 512 setup).
    """

    in_channels: int = 1
    resolution: int = 32
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 64
    codebook_size: int = 256
    codebook_dim: int = 32
    dropout: float = 0.0
    norm_groups: int = 32
    commitment: float = 0.25
    input_size: int = 0
    # "vqgan": this module (trainable); "llamagen": the LlamaGen VQ of the Halton successor
    # (imported weights only; models.halton)
    layout: str = "vqgan"

    @property
    def grid_size(self) -> int:
        return (self.input_size or self.resolution) // 2 ** (len(self.ch_mult) - 1)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # Small models use fewer channels than 32: take the largest divisor that fits.
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x), as one fused op (forward and backward): a sixth of a CPU training step
    went to the two-op form."""
    return F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 projections."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, c, h * w).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad keeps the taming geometry


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention where configured,
    then an optional ``downsample`` / ``upsample`` (set by the encoder / decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def forward(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                h = getattr(self, name)(h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, z_channels, H/f, W/f]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = cfg.resolution, cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level, cout = _Level(), cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout, cfg.dropout, g))
                cin = cout
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cin, g))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(cin, cfg.dropout, g)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, in_channels, h*f, w*f]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        g = cfg.norm_groups
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (len(cfg.ch_mult) - 1)  # where the architecture puts attention
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, cfg.dropout, g)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            level, cout = _Level(), cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cout, cfg.dropout, g))
                cin = cout
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(cin, g))
            if i != 0:
                level.upsample = Upsample(cin)
                res *= 2
            levels.insert(0, level)  # keep taming's indexing: up.0 is the finest level
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))

    @property
    def last_layer(self) -> nn.Parameter:
        return self.conv_out.weight


@dataclass
class QuantizerOutput:
    z_q: Tensor  # [B, D, h, w] straight-through quantized latents
    codes: Tensor  # [B, h, w] long
    loss: Tensor  # codebook + commitment loss (scalar)
    counts: Tensor = field(repr=False)  # [K] code usage counts in this batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with a straight-through estimator.

    loss = ||sg(z) - e||^2 + commitment * ||z - sg(e)||^2.
    Dead codes (no hits since the last revival) are re-seeded from recent encoder outputs
    by ``revive_dead_codes``, so the whole codebook gets used.
    """

    def __init__(self, codebook_size: int, dim: int, commitment: float = 0.25) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment = commitment
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Hits per code since the last revival; a buffer so a resumed run keeps counting.
        self.register_buffer("window_counts", torch.zeros(codebook_size), persistent=True)

    def nearest(self, flat: Tensor) -> Tensor:
        """[M, D] -> [M] index of the nearest code in L2."""
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None, :]
        return d.argmin(dim=1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        # The lookup always runs in fp32: under bf16 autocast nearest-code distances
        # would round and pick other codes than the fp32 model.
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.nearest(flat)
        e = self.embedding(idx)
        loss = F.mse_loss(e, flat.detach()) + self.commitment * F.mse_loss(flat, e.detach())
        e_st = flat + (e - flat).detach()
        z_q = e_st.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        if self.training:
            self.window_counts += counts
            self._last_flat = flat.detach()
        return QuantizerOutput(z_q=z_q, codes=idx.reshape(b, h, w), loss=loss, counts=counts)

    def lookup(self, codes: Tensor) -> Tensor:
        """[B, h, w] long -> [B, D, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def revive_dead_codes(self, generator: torch.Generator | None = None, min_hits: float = 1.0) -> int:
        """Re-seed codes with fewer than ``min_hits`` hits since the last call with encoder
        outputs of the latest training batch, then start a new counting window.

        Returns the number of codes revived.
        """
        flat = getattr(self, "_last_flat", None)
        if flat is None:
            return 0
        dead = (self.window_counts < min_hits).nonzero().flatten()
        self.window_counts.zero_()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device="cpu")
        self.embedding.weight.data[dead] = flat[pick.to(flat.device)]
        return int(dead.numel())


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> decoder. Images in [-1, 1]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_dim, cfg.commitment)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, QuantizerOutput]:
        q = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(q.z_q)), q

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, C, H, W] in [-1, 1] -> codes [B, h, w] (long)."""
        return self.quantize(self.quant_conv(self.encoder(images))).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, h, w] (long) -> images [B, C, H, W], clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes))).clamp(-1, 1)
