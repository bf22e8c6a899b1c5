"""Wall-clock timing of the decoders: MaskGIT's T parallel steps against the autoregressive
baseline's N sequential steps (transformer work only; the tokenizer's decoder is the same
for both and left out). Shared by ``sweeps/comparison.py`` and ``benchmarks/decode_speed.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from maskgit_lab.decoding.ar_sampler import ARDecodeConfig, ar_decode
from maskgit_lab.decoding.generate import generate_codes
from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.hardware import autocast
from maskgit_lab.models.ar import ARTransformer
from maskgit_lab.models.transformer import MaskGITTransformer, TransformerConfig

Tensor = torch.Tensor


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: torch.device | str, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def benchmark_num_classes(cfg) -> int:
    """Class count for random-weight benchmarks of an experiment (no dataset needed): 10 for
    Fashion-MNIST, ImageNet's 1000 otherwise."""
    return 10 if cfg.data.name == "fmnist" else 1000


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str) -> float | None:
    """Peak CUDA memory allocated since the last reset, in GiB; None off the GPU (the CPU
    allocator has no comparable counter)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def labels_for(batch: int, num_classes: int, device: torch.device | str) -> Tensor:
    return torch.arange(batch, device=device) % max(1, num_classes)


def maskgit_seconds(model: MaskGITTransformer, batch: int, config: DecodeConfig, device: torch.device | str,
                    repeats: int = 3, dtype: torch.dtype | None = None) -> float:
    """Seconds for one T-step decode of ``batch`` images from an all-masked grid."""
    labels = labels_for(batch, model.cfg.num_classes, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run():
        with autocast(device, dtype):
            generate_codes(model, labels, config, gen)

    return median_seconds(run, device, repeats)


def forward_seconds(model: MaskGITTransformer, batch: int, device: torch.device | str, repeats: int = 3,
                    dtype: torch.dtype | None = None, passes: int = 1) -> float:
    """Seconds for ``passes`` bare forward passes over an all-masked batch (no sampling)."""
    labels = labels_for(batch, model.cfg.num_classes, device)
    tokens = torch.full((batch, model.cfg.num_tokens), model.cfg.mask_id, device=device, dtype=torch.long)

    @torch.inference_mode()
    def run():
        with autocast(device, dtype):
            for _ in range(passes):
                model(tokens, labels)

    return median_seconds(run, device, repeats)


def ar_seconds(model: ARTransformer, batch: int, decoder: str, device: torch.device | str, repeats: int = 3,
               dtype: torch.dtype | None = None) -> float:
    """Seconds for one autoregressive decode (N forward passes) of ``batch`` images."""
    labels = labels_for(batch, model.cfg.num_classes, device)
    gen = torch.Generator(device=device).manual_seed(0)

    def run():
        with autocast(device, dtype):
            ar_decode(model, labels, ARDecodeConfig(decoder=decoder), gen)

    return median_seconds(run, device, repeats)


def random_models(cfg: TransformerConfig, device: torch.device | str) -> tuple[MaskGITTransformer, ARTransformer]:
    """Both networks at a geometry (filled-in TransformerConfig) with random weights, in eval
    mode: speed does not depend on the weights' values."""
    torch.manual_seed(0)
    return MaskGITTransformer(cfg).to(device).eval(), ARTransformer(cfg).to(device).eval()
