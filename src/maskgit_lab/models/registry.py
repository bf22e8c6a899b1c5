"""Model classes by name: the transformer layouts, and the network each kind of model file
holds. Loading code asks this table instead of importing every class itself."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from maskgit_lab.errors import ConfigError
from maskgit_lab.models.ar import ARTransformer
from maskgit_lab.models.halton import HaltonMaskGITTransformer, LlamaGenVQ
from maskgit_lab.models.released import MaskGITPyTorchTransformer
from maskgit_lab.models.transformer import MaskGITTransformer, TransformerConfig
from maskgit_lab.models.vqgan import VQGAN, TokenizerConfig

TRANSFORMER_LAYOUTS: dict[str, type[nn.Module]] = {
    "maskgit": MaskGITTransformer,
    "maskgit-pytorch": MaskGITPyTorchTransformer,
    "halton-maskgit": HaltonMaskGITTransformer,
}
TOKENIZER_LAYOUTS: dict[str, type[nn.Module]] = {"vqgan": VQGAN, "llamagen": LlamaGenVQ}


def build_tokenizer(cfg: TokenizerConfig) -> nn.Module:
    """The tokenizer network of ``cfg.layout`` (same encode/decode either way)."""
    if cfg.layout not in TOKENIZER_LAYOUTS:
        raise ConfigError(f"unknown tokenizer layout {cfg.layout!r}; valid: {', '.join(TOKENIZER_LAYOUTS)}")
    return TOKENIZER_LAYOUTS[cfg.layout](cfg)


def build_transformer(cfg: TransformerConfig) -> nn.Module:
    """The MaskGIT network of ``cfg.layout`` (same call and output either way)."""
    return TRANSFORMER_LAYOUTS[cfg.resolved().layout](cfg)


# Kind of a model file -> builder from the experiment config stored inside it.
MODEL_KINDS: dict[str, Callable[..., nn.Module]] = {
    "tokenizer": lambda cfg: build_tokenizer(cfg.tokenizer),
    "transformer": lambda cfg: build_transformer(cfg.transformer),
    "ar_transformer": lambda cfg: ARTransformer(cfg.transformer),
}
