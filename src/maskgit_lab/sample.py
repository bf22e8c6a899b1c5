"""Sample a class-by-sample grid (and optionally the decoding process) from a trained model.

    python -m maskgit_lab.sample --config experiments/fmnist.yaml --schedule cosine --steps 8 \
        --out grid.png [--process process.png] [--gumbel-temperature 4.5] [--cfg-weight 0] [--seed 0]

Decode settings left out come from the checkpoint's config (its ``sampling`` section).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from maskgit_lab.checkpoints import load_models
from maskgit_lab.cli import add_decode_arguments, add_device_argument, decode_config_from_args
from maskgit_lab.config import load_config
from maskgit_lab.data import class_names
from maskgit_lab.decoding.generate import (
    check_guidance,
    codes_to_images,
    for_sampling,
    generate_codes,
    generate_images,
)
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.figures import decoding_process_figure, masked_overlay, sample_grid_figure
from maskgit_lab.hardware import dtype_name, inference_dtype
from maskgit_lab.identity import model_file
from maskgit_lab.io import check_output


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml",
                        help="experiment whose trained transformer to use when --checkpoint is not given")
    parser.add_argument("--checkpoint", help="transformer model file (transformer.pt)")
    parser.add_argument("--tokenizer", help="tokenizer model file (default: the one recorded in the checkpoint)")
    parser.add_argument("--per-class", type=int, default=8, help="samples per class (columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="output PNG of the grid")
    parser.add_argument("--process", help="also save the decoding process (two classes) to this PNG")
    add_device_argument(parser)
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.out, "--out")
    if args.process:
        check_output(args.process, "--process")
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")

    if args.checkpoint is None:
        exp = load_config(args.config)
        args.checkpoint = str(model_file(exp, "transformer"))
        if not Path(args.checkpoint).is_file():
            raise ConfigError(
                f"no trained transformer at {args.checkpoint}: run `python -m maskgit_lab.train all "
                f"--config {args.config}` first, or pass --checkpoint"
            )
    transformer, tok, cfg, meta = load_models(args.checkpoint, args.tokenizer, args.device)
    dcfg = decode_config_from_args(cfg.sampling, args, transformer.cfg.num_tokens, transformer.cfg.codebook_size)
    check_guidance(cfg.transformer_train.class_dropout, dcfg)
    names = class_names(cfg, transformer.cfg.num_classes)

    labels = torch.arange(transformer.cfg.num_classes).repeat_interleave(args.per_class)
    start = time.time()
    dtype, _ = inference_dtype(cfg.inference_precision, args.device)
    images = generate_images(for_sampling(transformer, dtype), for_sampling(tok, dtype), labels, dcfg, args.seed)
    seconds = time.time() - start
    title = (f"{dcfg.schedule}, T={dcfg.steps}, tau={dcfg.choice_temperature:g}, w={dcfg.guidance_weight:g}, "
             f"seed={args.seed} | {Path(args.checkpoint).name} @ {meta.get('git_commit', '?')[:10]}")
    sample_grid_figure(images, names, title, args.out)
    print(f"wrote {args.out}: {len(labels)} samples in {seconds:.1f} s ({seconds / len(labels) * 1000:.1f} ms/image, "
          f"{dtype_name(dtype)})")

    if args.process:
        device = next(transformer.parameters()).device
        gen = torch.Generator(device=device).manual_seed(args.seed)
        lab = torch.tensor([0, transformer.cfg.num_classes // 2], device=device)[: transformer.cfg.num_classes]
        res = generate_codes(transformer, lab, dcfg, gen, return_history=True)
        panels = []
        for i, c in enumerate(lab.tolist()):
            pred = codes_to_images(tok, res.predictions[:, i])
            kept = masked_overlay(pred, res.states[:, i] == transformer.cfg.mask_id, tok.cfg.grid_size)
            panels.append((names[c], kept.cpu(), pred.cpu()))
        decoding_process_figure(panels, tok.cfg.grid_size, f"decoding process: {title}", args.process)
        print(f"wrote {args.process}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
