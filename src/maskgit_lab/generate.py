"""Class-conditional generation: the decoder over a transformer, then the tokenizer's decoder."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from maskgit_lab.models.transformer import MaskGITTransformer
from maskgit_lab.models.vqgan import VQGAN
from maskgit_lab.sampler import DecodeConfig, DecodeResult, decode

Tensor = torch.Tensor


def check_guidance(train_class_dropout: float, config: DecodeConfig) -> None:
    """Guidance needs an unconditional model: refuse it for one trained without class dropout."""
    from maskgit_lab.errors import ConfigError

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
) -> Iterator[Tensor]:
    """Yield image batches [b, C, H, W] in [-1, 1] (on CPU): ``codes_fn(labels_chunk, generator)``
    makes each chunk's codes [b, N], the tokenizer decodes them.

    A single generator seeded with ``seed`` is consumed batch after batch, so the output
    depends on ``seed`` and ``batch_size`` only, never on global random state. Streaming
    lets evaluation consume samples without holding them all.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    for chunk in labels.split(batch_size):
        with torch.inference_mode():  # closed before yielding: the mode must not leak to the consumer
            codes = codes_fn(chunk.to(device), gen)
            images = codes_to_images(tokenizer, codes).cpu()
        yield images


def iter_images(
    transformer: MaskGITTransformer,
    tokenizer: VQGAN,
    labels: Tensor,
    config: DecodeConfig,
    seed: int,
    batch_size: int = 256,
) -> Iterator[Tensor]:
    """MaskGIT samples for class ``labels`` [B] from one seed, streamed as ``iter_decoded``."""
    device = next(transformer.parameters()).device
    return iter_decoded(lambda y, g: generate_codes(transformer, y, config, g).tokens,
                        tokenizer, labels, seed, batch_size, device)


def generate_images(
    transformer: MaskGITTransformer,
    tokenizer: VQGAN,
    labels: Tensor,
    config: DecodeConfig,
    seed: int,
    batch_size: int = 256,
) -> Tensor:
    """All images of ``iter_images`` as one tensor [B, C, H, W]."""
    return torch.cat(list(iter_images(transformer, tokenizer, labels, config, seed, batch_size)))
