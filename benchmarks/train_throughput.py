"""Training and sampling throughput of an experiment's models, fp32 against bf16 autocast.

    python benchmarks/train_throughput.py [--config experiments/fmnist.yaml] [--steps 8]
        [--device cuda] [--no-tokenizer] [--batch-size B] [overrides ...]

Prints seconds per optimizer step for the tokenizer and the transformer at the
config's batch sizes (random inputs of the right shapes, no data needed), the
transformer's forward time at that batch, and on a GPU the peak memory of each.
Use it to choose each stage's ``precision``, batch size and step budget for a
machine; at the ImageNet geometry (``--config experiments/imagenet256.yaml``)
on a CPU, ``--no-tokenizer --batch-size 2 --steps 1`` keeps it to minutes.
"""

from __future__ import annotations

import argparse
import sys

import torch

from maskgit_lab.cli import add_device_argument
from maskgit_lab.config import load_config, with_data_sizes
from maskgit_lab.decoding.speed import (
    benchmark_num_classes,
    median_seconds,
    peak_memory_gib,
    reset_peak_memory,
)
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.hardware import machine_name
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.models.vqgan import VQGAN

DTYPES = {"fp32": None, "bf16-mixed": torch.bfloat16}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    add_device_argument(parser)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement (median)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="one batch size for both stages instead of the config's")
    parser.add_argument("--no-tokenizer", action="store_true", help="time the transformer only")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise ConfigError("--steps and --batch-size must be at least 1")
    cfg = load_config(args.config, args.overrides)
    tc = cfg.tokenizer
    cfg = with_data_sizes(cfg, tc.codebook_size, tc.num_tokens, benchmark_num_classes(cfg))
    device = args.device
    torch.set_float32_matmul_precision("high")
    print(f"geometry: {cfg.name}; machine: {machine_name(device)}; torch {torch.__version__}")

    measurements = []
    if not args.no_tokenizer:
        tok = VQGAN(tc).to(device)
        opt = torch.optim.Adam(tok.parameters())
        bt = args.batch_size or cfg.tokenizer_train.batch_size
        size = tc.input_size or tc.resolution
        x = torch.rand(bt, tc.in_channels, size, size, device=device) * 2 - 1

        def tok_step():
            rec, q = tok(x)
            loss = (rec.float() - x).abs().mean() + q.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        measurements.append((f"tokenizer train step ({sum(p.numel() for p in tok.parameters()) / 1e6:.1f}M)",
                             tok_step, bt))

    module = MVTMModule(cfg).to(device)
    module.log_dict = lambda *a, **k: None  # no trainer attached in a bare benchmark
    mopt = module.configure_optimizers()["optimizer"]
    bm = args.batch_size or cfg.transformer_train.batch_size
    ttc = cfg.transformer
    codes = torch.randint(0, ttc.codebook_size, (bm, ttc.num_tokens), device=device)
    labels = torch.randint(0, ttc.num_classes, (bm,), device=device)

    def tr_step():
        loss = module.training_step((codes, labels), 0)
        mopt.zero_grad(set_to_none=True)
        loss.backward()
        mopt.step()

    def tr_forward():
        with torch.inference_mode():
            module.model.eval()(codes, labels)
        module.model.train()

    params = module.model.num_parameters() / 1e6
    measurements += [(f"transformer train step ({params:.1f}M)", tr_step, bm),
                     ("transformer forward (sampling)", tr_forward, bm)]

    for name, fn, batch in measurements:
        for label, dtype in DTYPES.items():
            ctx = torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)
            reset_peak_memory(device)
            with ctx:
                sec = median_seconds(fn, device, repeats=args.steps, warmup=2)
            peak = peak_memory_gib(device)
            print(f"{name:36s} {label:10s} batch {batch:4d}: {sec * 1000:9.1f} ms/step, "
                  f"{batch / sec:9.2f} images/s" + (f", peak {peak:.2f} GiB" if peak is not None else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
