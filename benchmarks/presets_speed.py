"""Sampling speed and peak memory of each upstream's sampler preset on each network.

    python benchmarks/presets_speed.py --device cuda --dtype bf16                 # ImageNet 256, both networks
    python benchmarks/presets_speed.py --configs experiments/fmnist_smoke.yaml --batch 2 --steps 2 --device cpu

For every config (default: the reproduction's network, experiments/imagenet256.yaml, and the
Halton successor's, experiments/halton256.yaml), every preset (official, maskgit-pytorch,
halton-maskgit), every T and guidance off and on: images per second of a T-step decode at
--batch from an all-masked grid, and the peak accelerator memory. Random weights at the
config's geometry (speed does not depend on their values); transformer work only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from maskgit_lab.cli import add_device_argument
from maskgit_lab.config import load_config
from maskgit_lab.decoding.sampler import PRESETS
from maskgit_lab.decoding.speed import (
    benchmark_num_classes,
    maskgit_seconds,
    peak_memory_gib,
    reset_peak_memory,
)
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.hardware import machine_name
from maskgit_lab.models.registry import build_transformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def integers(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. 8,32") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{flag} {text!r}: every value must be at least 1")
    return values


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="experiments/imagenet256.yaml,experiments/halton256.yaml",
                        help="comma-separated experiment configs (their networks and geometries)")
    add_device_argument(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="autocast dtype of the forward passes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", default="8,32", help="T values, comma-separated")
    parser.add_argument("--guidance", type=float, default=3.0, help="the guidance weight of the 'on' rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    steps = integers(args.steps, "--steps")
    if args.batch < 1 or args.repeats < 1:
        raise ConfigError("--batch and --repeats must be at least 1")
    if not args.guidance > 0:
        raise ConfigError(f"--guidance must be a positive number, got {args.guidance}")
    torch.set_float32_matmul_precision("high")
    print(f"machine: {machine_name(args.device)}; dtype {args.dtype}; batch {args.batch}; torch {torch.__version__}")
    print(f"{'network':<34} {'preset':<17}{'T':>4}{'guidance':>10}{'img/s':>10}{'peak GiB':>10}")
    for path in args.configs.split(","):
        cfg = load_config(path, [])
        tok = cfg.tokenizer
        tcfg = replace(cfg.transformer, codebook_size=tok.codebook_size, num_tokens=tok.num_tokens,
                       num_classes=benchmark_num_classes(cfg)).resolved()
        torch.manual_seed(0)
        model = build_transformer(tcfg).to(args.device).eval()
        name = f"{cfg.name} ({tcfg.layout}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)"
        for preset in PRESETS:
            for t in steps:
                for w in (0.0, args.guidance):
                    dcfg = replace(type(cfg.sampling)(), preset=preset, steps=t, schedule=cfg.sampling.schedule,
                                   guidance_weight=w).validated(tcfg.num_tokens, tcfg.codebook_size)
                    reset_peak_memory(args.device)
                    seconds = maskgit_seconds(model, args.batch, dcfg, args.device, args.repeats, DTYPES[args.dtype])
                    peak = peak_memory_gib(args.device)
                    print(f"{name:<34} {preset:<17}{t:>4}{w:>10g}{args.batch / seconds:>10.2f}"
                          f"{'' if peak is None else f'{peak:.2f}':>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
