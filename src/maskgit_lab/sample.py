"""Sample a class-by-sample grid (and optionally the decoding process) from a trained model.

    python -m maskgit_lab.sample --config experiments/fmnist.yaml --schedule cosine --steps 8 \
        --out grid.png [--process process.png] [--gumbel-temperature 4.5] [--cfg-weight 0] [--seed 0]

Decode settings left out come from the checkpoint's config (its ``sampling`` section).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from maskgit_lab.checkpoints import load_tokenizer, load_transformer, tokenizer_identity
from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError, add_device_argument, cli_errors
from maskgit_lab.figures import decoding_process_figure, masked_overlay, sample_grid_figure
from maskgit_lab.generate import check_guidance, codes_to_images, generate_codes, generate_images
from maskgit_lab.sampler import GUIDANCE_RAMPS, GUMBEL_ANNEALS, MASK_CONVENTIONS, DecodeConfig

# Command-line flag -> DecodeConfig field. Flags default to None: the checkpoint's config decides.
DECODE_FLAGS = {
    "schedule": "schedule",
    "steps": "steps",
    "gumbel_temperature": "choice_temperature",
    "softmax_temperature": "softmax_temperature",
    "cfg_weight": "guidance_weight",
    "cfg_ramp": "guidance_ramp",
    "mask_convention": "mask_convention",
    "gumbel_anneal": "gumbel_anneal",
}


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The decode flags shared by every command that samples."""
    g = parser.add_argument_group("decoding (default: the checkpoint's sampling config)")
    g.add_argument("--schedule", help="mask schedule, e.g. cosine, linear, arccos")
    g.add_argument("--steps", type=int, help="number of decoding steps T (1..N)")
    g.add_argument("--gumbel-temperature", type=float, help="choice temperature tau of the Gumbel noise")
    g.add_argument("--softmax-temperature", type=float, help="divides the logits before sampling (0 = argmax)")
    g.add_argument("--cfg-weight", type=float, help="classifier-free guidance weight w (0 = off)")
    g.add_argument("--cfg-ramp", choices=GUIDANCE_RAMPS, help="guidance ramp over the steps")
    g.add_argument("--mask-convention", choices=MASK_CONVENTIONS, help="how many tokens stay masked per step")
    g.add_argument("--gumbel-anneal", choices=GUMBEL_ANNEALS, help="annealing of the Gumbel noise")


def decode_config_from_args(base: DecodeConfig, args: argparse.Namespace, num_tokens: int) -> DecodeConfig:
    changes = {field: getattr(args, flag) for flag, field in DECODE_FLAGS.items() if getattr(args, flag) is not None}
    return replace(base, **changes).validated(num_tokens)


def load_models(checkpoint: str | Path, tokenizer: str | Path | None = None, device: str = "cpu"):
    """-> (transformer, tokenizer, config, transformer meta), checking they belong together."""
    transformer, cfg, meta = load_transformer(checkpoint)
    tok_path = Path(tokenizer or meta["tokenizer_file"])
    if not tok_path.is_file():
        raise ConfigError(f"tokenizer {str(tok_path)!r} of {checkpoint} not found; pass --tokenizer PATH")
    if tokenizer_identity(tok_path) != meta["tokenizer_sha"]:
        raise ConfigError(
            f"wrong checkpoint: {tok_path} is not the tokenizer {checkpoint} was trained on "
            f"(content hash {tokenizer_identity(tok_path)} != {meta['tokenizer_sha']})"
        )
    tok, _, _ = load_tokenizer(tok_path)
    return transformer.to(device), tok.to(device), cfg, meta


def class_names(cfg, num_classes: int) -> list[str]:
    if cfg.data.name == "fmnist":
        from maskgit_lab.data.fmnist import CLASS_NAMES

        return list(CLASS_NAMES)
    return [f"class {i}" for i in range(num_classes)]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgit_lab.sample", description=__doc__.splitlines()[0])
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
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {args.per_class}")

    if args.checkpoint is None:
        from maskgit_lab.train import run_paths

        exp = load_config(args.config)
        args.checkpoint = str(run_paths(exp).transformer_file)
        if not Path(args.checkpoint).is_file():
            raise ConfigError(
                f"no trained transformer at {args.checkpoint}: run `python -m maskgit_lab.train all "
                f"--config {args.config}` first, or pass --checkpoint"
            )
    transformer, tok, cfg, meta = load_models(args.checkpoint, args.tokenizer, args.device)
    dcfg = decode_config_from_args(cfg.sampling, args, transformer.cfg.num_tokens)
    check_guidance(cfg.transformer_train.class_dropout, dcfg)
    names = class_names(cfg, transformer.cfg.num_classes)

    labels = torch.arange(transformer.cfg.num_classes).repeat_interleave(args.per_class)
    start = time.time()
    images = generate_images(transformer, tok, labels, dcfg, args.seed)
    seconds = time.time() - start
    title = (f"{dcfg.schedule}, T={dcfg.steps}, tau={dcfg.choice_temperature:g}, w={dcfg.guidance_weight:g}, "
             f"seed={args.seed} | {Path(args.checkpoint).name} @ {meta.get('git_commit', '?')[:10]}")
    sample_grid_figure(images, names, title, args.out)
    print(f"wrote {args.out}: {len(labels)} samples in {seconds:.1f} s ({seconds / len(labels) * 1000:.1f} ms/image)")

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
