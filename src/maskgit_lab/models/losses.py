"""Tokenizer losses: a patch discriminator and a perceptual loss over a pluggable feature net."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg16

from maskgit_lab.errors import ConfigError

Tensor = torch.Tensor


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4x4 convs, one real/fake logit per receptive-field patch."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(ch * prev, ch * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ch * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ch * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class PerceptualLoss(nn.Module):
    """Distance between unit-normalised feature maps of a frozen feature network.

    ``features`` maps images [B, C, H, W] in [-1, 1] to a list of feature maps; any
    network can be plugged in (see ``PERCEPTUAL_NETWORKS``).
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # the feature net stays frozen in eval mode
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = x.new_zeros(())
        for fx, fy in zip(self.features(x), self.features(y), strict=True):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (fx - fy).pow(2).sum(dim=1).mean()
        return total


class VGG16Features(nn.Module):
    """torchvision VGG16 conv features at the five relu*_2/3 taps, from a local weights file."""

    TAPS = (3, 8, 15, 22, 29)

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(
                f"perceptual weights file {str(path)!r} not found; give a local torchvision "
                "vgg16 state dict (nothing is downloaded at run time) or set perceptual.network=none"
            )
        net = vgg16()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.body = net.features[: self.TAPS[-1] + 1]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.body):
            h = layer(h)
            if i in self.TAPS:
                out.append(h)
        return out


PERCEPTUAL_NETWORKS: dict[str, Callable[[str], nn.Module]] = {
    "vgg16": VGG16Features,
}


def build_perceptual(network: str, weights: str) -> PerceptualLoss | None:
    """Build the perceptual loss named in the config, or None for ``network='none'``."""
    if network == "none":
        return None
    if network not in PERCEPTUAL_NETWORKS:
        valid = ", ".join(["none", *PERCEPTUAL_NETWORKS])
        raise ConfigError(f"unknown perceptual network {network!r}; valid: {valid}")
    return PerceptualLoss(PERCEPTUAL_NETWORKS[network](weights))
