"""Decoding speed: MaskGIT's T parallel steps against the autoregressive baseline's N steps.

    python benchmarks/decode_speed.py [--config experiments/fmnist.yaml] [--device cpu|cuda]
        [--dtype fp32|bf16] [--steps 4,8,12,16] [--large-batch 500] [--repeats 3]
    python benchmarks/decode_speed.py --config experiments/imagenet256.yaml --large-batch 16

Random weights at the config's geometry (speed does not depend on the weights' values):
the transformer preset, N tokens from the tokenizer grid, K codes, and the dataset's classes.
Prints, at batch 1 and at a large batch: MaskGIT's time per image against T; the AR decoders
(whole prefix recomputed per token, and KV cache); the speed-up of MaskGIT at T = 8 over
each; and the sampler's overhead, the wall time of a T-step decode divided by T bare forward
passes of the same batch (aim: <= 1.05). Transformer work only; the tokenizer decoder is
the same for every method and left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace

import torch

from maskgit_lab.cli import add_device_argument
from maskgit_lab.config import load_config
from maskgit_lab.decoding.speed import (
    ar_seconds,
    benchmark_num_classes,
    forward_seconds,
    maskgit_seconds,
    peak_memory_gib,
    random_models,
    reset_peak_memory,
)
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.hardware import machine_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    add_device_argument(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="autocast dtype of the forward passes")
    parser.add_argument("--steps", default="4,8,12,16", help="MaskGIT step counts T, comma-separated")
    parser.add_argument("--large-batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ar", action="store_true", help="skip the autoregressive decoders")
    parser.add_argument("--no-recompute", action="store_true", help="skip the (slow) recomputing AR decoder")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    try:
        steps = [int(x) for x in args.steps.split(",")]
    except ValueError:
        raise ConfigError(f"--steps {args.steps!r} must be comma-separated integers, e.g. 4,8,12") from None
    if args.large_batch < 1 or args.repeats < 1:
        raise ConfigError("--large-batch and --repeats must be at least 1")
    tok = cfg.tokenizer
    tcfg = replace(cfg.transformer, codebook_size=tok.codebook_size, num_tokens=tok.num_tokens,
                   num_classes=benchmark_num_classes(cfg)).resolved()
    for t in steps:
        replace(cfg.sampling, steps=t).validated(tcfg.num_tokens)
    dtype = DTYPES[args.dtype]
    torch.set_float32_matmul_precision("high")
    maskgit, ar = random_models(tcfg, args.device)
    n = tcfg.num_tokens
    print(f"geometry: {cfg.name}: {tcfg.depth} layers x {tcfg.dim} wide, {tcfg.heads} heads, N={n} tokens, "
          f"K={tcfg.codebook_size} codes, {tcfg.num_classes} classes; MaskGIT {maskgit.num_parameters() / 1e6:.1f}M "
          f"params, AR {ar.num_parameters() / 1e6:.1f}M")
    print(f"machine: {machine_name(args.device)}; dtype {args.dtype}; torch {torch.__version__}")
    batches = (1, args.large_batch)
    kw = {"device": args.device, "repeats": args.repeats, "dtype": dtype}
    results: dict[tuple[str, int], float] = {}

    print(f"\nMaskGIT (schedule {cfg.sampling.schedule}), seconds per image:")
    print(f"{'T':>4} " + "".join(f"{f'batch {b}':>14}" for b in batches))
    for t in steps:
        dcfg = replace(cfg.sampling, steps=t, guidance_weight=0.0)
        reset_peak_memory(args.device)
        row = [maskgit_seconds(maskgit, b, dcfg, **kw) / b for b in batches]
        for b, v in zip(batches, row, strict=True):
            results[(f"maskgit-T{t}", b)] = v
        peak = peak_memory_gib(args.device)
        print(f"{t:>4} " + "".join(f"{v:>14.5f}" for v in row)
              + f"   ({1 / row[-1]:.1f} img/s at batch {batches[-1]}"
              + (f", peak {peak:.2f} GiB)" if peak is not None else ")"), flush=True)

    if not args.no_ar:
        print(f"\nautoregressive baseline ({n} forward passes per image), seconds per image:")
        decoders = ["kv-cache"] + ([] if args.no_recompute else ["recompute"])
        for d in decoders:
            row = [ar_seconds(ar, b, d, **{**kw, "repeats": 1 if b > 1 else args.repeats}) / b for b in batches]
            for b, v in zip(batches, row, strict=True):
                results[(f"ar-{d}", b)] = v
            print(f"{d:>10} " + "".join(f"{v:>14.5f}" for v in row), flush=True)
        ref = 8 if 8 in steps else steps[0]
        print(f"\nspeed-up of MaskGIT T={ref} over the AR decoders (AR time / MaskGIT time):")
        for d in decoders:
            ratios = [results[(f"ar-{d}", b)] / results[(f"maskgit-T{ref}", b)] for b in batches]
            print(f"{d:>10} " + "".join(f"{f'x{r:.1f} (batch {b})':>20}" for r, b in zip(ratios, batches, strict=True)))

    print("\nsampler overhead: T-step decode / (T bare forward passes), aim <= 1.05:")
    for t in steps:
        dcfg = replace(cfg.sampling, steps=t, guidance_weight=0.0)
        parts = []
        for b in batches:
            # interleaved, so drift in the machine's speed hits both sides alike
            pairs = [(maskgit_seconds(maskgit, b, dcfg, **{**kw, "repeats": 1}),
                      forward_seconds(maskgit, b, passes=t, **{**kw, "repeats": 1})) for _ in range(args.repeats)]
            ratio = statistics.median(d / f for d, f in pairs)
            parts.append(f"{f'{ratio:.3f} (batch {b})':>20}")
        print(f"T={t:<3}" + "".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
