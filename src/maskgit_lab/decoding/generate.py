"""Class-conditional generation: the decoder over a transformer, then the tokenizer's decoder."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from maskgit_lab.decoding.sampler import DecodeConfig, DecodeResult, decode
from maskgit_lab.errors import ConfigError
from maskgit_lab.hardware import autocast
from maskgit_lab.models.transformer import MaskGITTransformer
from maskgit_lab.models.vqgan import VQGAN

Tensor = torch.Tensor


def check_guidance(train_class_dropout: float, config: DecodeConfig) -> None:
    """Guidance needs an unconditional model: refuse it for one trained without class dropout."""
    if config.guidance_weight > 0 and train_class_dropout <= 0:
        raise ConfigError(
            f"guidance weight {config.guidance_weight} needs a model trained with class dropout "
            "(transformer_train.class_dropout > 0); this one was trained with 0: use --cfg-weight 0"
        )


@torch.inference_mode()
def generate_codes(
    transformer: MaskGITTransformer,
    labels: Tensor,
    config: DecodeConfig,
    generator: torch.Generator,
    return_history: bool = False,
    init_tokens: Tensor | None = None,
) -> DecodeResult:
    """Decode codes for ``labels`` [B] from an all-masked grid (or ``init_tokens`` [B, N])."""
    tcfg = transformer.cfg
    device = labels.device
    if init_tokens is None:
        init_tokens = torch.full((labels.shape[0], tcfg.num_tokens), tcfg.mask_id, device=device, dtype=torch.long)
    return decode(
        transformer, init_tokens, tcfg.mask_id, config, generator,
        labels=labels, null_label=tcfg.null_label, return_history=return_history,
    )


def for_sampling(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself for fp32 sampling, else an eval-mode copy with its weights cast to
    ``dtype`` once (cheaper than autocast casting the weights at every forward). The copy is
    for sampling only: a cast tokenizer decodes codes, it does not encode images."""
    return model if dtype is None else copy.deepcopy(model).to(dtype).eval()


@torch.inference_mode()
def codes_to_images(tokenizer: VQGAN, codes: Tensor) -> Tensor:
    """codes [B, N] -> images [B, C, H, W] in [-1, 1]."""
    side = tokenizer.cfg.grid_size
    return tokenizer.decode(codes.reshape(codes.shape[0], side, side))


def iter_decoded(
    codes_fn: Callable[[Tensor, torch.Generator], Tensor],
    tokenizer: VQGAN,
    labels: Tensor,
    seed: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> Iterator[Tensor]:
    """Yield image batches [b, C, H, W] in [-1, 1] (on CPU): ``codes_fn(labels_chunk, generator)``
    makes each chunk's codes [b, N], the tokenizer decodes them.

    A single generator seeded with ``seed`` is consumed batch after batch, so the output
    depends on ``seed`` and ``batch_size`` only, never on global random state. Streaming
    lets evaluation consume samples without holding them all. ``dtype``: autocast dtype of
    the networks (None: fp32); the images come out in fp32.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    for chunk in labels.split(batch_size):
        # closed before yielding: the modes must not leak to the consumer
        with torch.inference_mode(), autocast(device, dtype):
            codes = codes_fn(chunk.to(device), gen)
            images = codes_to_images(tokenizer, codes).float().cpu()
        yield images


def iter_images(
    transformer: MaskGITTransformer,
    tokenizer: VQGAN,
    labels: Tensor,
    config: DecodeConfig,
    seed: int,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> Iterator[Tensor]:
    """MaskGIT samples for class ``labels`` [B] from one seed, streamed as ``iter_decoded``."""
    device = next(transformer.parameters()).device
    return iter_decoded(lambda y, g: generate_codes(transformer, y, config, g).tokens,
                        tokenizer, labels, seed, batch_size, device, dtype)


def generate_images(
    transformer: MaskGITTransformer,
    tokenizer: VQGAN,
    labels: Tensor,
    config: DecodeConfig,
    seed: int,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """All images of ``iter_images`` as one tensor [B, C, H, W]."""
    return torch.cat(list(iter_images(transformer, tokenizer, labels, config, seed, batch_size, dtype)))
