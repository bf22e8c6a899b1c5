"""Image editing with the MaskGIT decoder (the paper's section 4.3): inpainting,
outpainting and class-conditional editing of one image.

    python -m maskgit_lab.edit --test-index 3 --mode inpaint --box 0.25,0.25,0.75,0.75 --out edit.png
    python -m maskgit_lab.edit --input shirt.png --mode outpaint --side right --out edit.png
    python -m maskgit_lab.edit --input shirt.png --mode class --box 0,0.5,1,1 --class 7 --out edit.png

The image is encoded to tokens; the tokens whose patches overlap the region are masked;
the sampler fills them in T steps given the others (partially known input) and the class:
the image's own for inpainting and outpainting, the one asked for in class editing. The
output PNG shows the input, the region to regenerate, and the result; ``--process`` also
saves the decoding steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import functional as TF

from maskgit_lab.checkpoints import load_models
from maskgit_lab.cli import add_decode_arguments, add_device_argument, decode_config_from_args
from maskgit_lab.config import load_config
from maskgit_lab.data import class_names
from maskgit_lab.data.fmnist import FashionMNISTDataModule
from maskgit_lab.decoding.generate import codes_to_images
from maskgit_lab.decoding.regions import SIDES, box_region, center_box, edit_codes, side_region
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.figures import decoding_process_figure, edit_figure, masked_overlay
from maskgit_lab.identity import model_file
from maskgit_lab.io import check_output

Tensor = torch.Tensor

MODES = ("inpaint", "outpaint", "class")


def load_image(path: str | Path, channels: int, size: int) -> Tensor:
    """An image file -> [1, C, size, size] in [-1, 1]. Images smaller than ``size`` are padded
    with black around the centre (as Fashion-MNIST's 28 px are to 32), larger ones resized
    on the shorter side and centre-cropped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input image {str(p)!r} not found")
    try:
        img = Image.open(p).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"{p} is not a readable image ({exc})") from None
    x = TF.to_tensor(img)
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        x = torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top), value=0.0)
    else:
        x = TF.center_crop(TF.resize(x, size, antialias=True), size)
    return (x * 2 - 1)[None]


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--box {text!r} must be four fractions x0,y0,x1,y1, e.g. 0.25,0.25,0.75,0.75")
    return values  # type: ignore[return-value]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.edit", description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="image file to edit (PNG, JPEG, ...)")
    src.add_argument("--test-index", type=int, help="edit this image of the experiment's test split instead")
    parser.add_argument("--mode", choices=MODES, default="inpaint")
    parser.add_argument("--box", help="region x0,y0,x1,y1 as fractions (inpaint, class; default: the centre 50%%)")
    parser.add_argument("--side", choices=SIDES, default="right", help="outpaint: the side to regenerate")
    parser.add_argument("--fraction", type=float, default=0.5, help="outpaint: how much of that side")
    parser.add_argument("--class", dest="label", type=int,
                        help="class to generate with (class mode: required; else the test label, or --input's guess)")
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--checkpoint", help="transformer model file (default: the config's trained one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="edit.png")
    parser.add_argument("--process", help="also save the decoding steps to this PNG")
    add_device_argument(parser)
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    check_output(args.out, "--out")
    if args.process:
        check_output(args.process, "--process")
    cfg = load_config(args.config)
    ckpt = args.checkpoint or str(model_file(cfg, "transformer"))
    if not Path(ckpt).is_file():
        raise ConfigError(f"no trained transformer at {ckpt}: run `python -m maskgit_lab.train all` first, "
                          "or pass --checkpoint")
    transformer, tok, mcfg, _ = load_models(ckpt, device=args.device)
    dcfg = decode_config_from_args(mcfg.sampling, args, transformer.cfg.num_tokens, transformer.cfg.codebook_size)
    names = class_names(mcfg, transformer.cfg.num_classes)
    grid = tok.cfg.grid_size
    if args.mode == "outpaint":
        region = side_region(grid, args.side, args.fraction)
    else:
        region = box_region(grid, parse_box(args.box) if args.box else center_box(0.5))
    if args.mode == "class" and args.label is None:
        raise ConfigError(f"--mode class needs --class, one of 0..{transformer.cfg.num_classes - 1} ({', '.join(names)})")
    if args.label is not None and not 0 <= args.label < transformer.cfg.num_classes:
        raise ConfigError(f"--class {args.label} is not a class; valid: 0..{transformer.cfg.num_classes - 1}")

    label = args.label
    if args.test_index is not None:
        if mcfg.data.name != "fmnist":
            raise ConfigError("--test-index reads the Fashion-MNIST test split; pass --input for other data")
        test = FashionMNISTDataModule(mcfg.data).dataset("test")
        if not 0 <= args.test_index < len(test):
            raise ConfigError(f"--test-index {args.test_index} out of range 0..{len(test) - 1}")
        image, true_label = test[args.test_index]
        image = image[None]
        label = int(true_label) if label is None else label
    else:
        image = load_image(args.input, tok.cfg.in_channels, tok.cfg.resolution)
        if label is None:
            raise ConfigError(f"--input images carry no label: pass --class, one of 0..{transformer.cfg.num_classes - 1}")

    device = next(transformer.parameters()).device
    with torch.inference_mode():
        codes = tok.encode(image.to(device)).reshape(1, -1)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    labels = torch.tensor([label], device=device)
    res = edit_codes(transformer, codes, region, labels, dcfg, gen, return_history=args.process is not None)
    with torch.inference_mode():
        result = codes_to_images(tok, res.tokens)[0].cpu()
        recon = codes_to_images(tok, codes)[0].cpu()
    shown = masked_overlay(image, region[None], grid)[0]
    title = (f"{args.mode}: {int(region.sum())}/{region.numel()} tokens regenerated, class {names[label]}, "
             f"{dcfg.schedule} T={dcfg.steps}, seed {args.seed}")
    edit_figure([("input", image[0]), ("region (grey)", shown), ("tokenizer reconstruction", recon),
                      ("edited", result)], title, args.out)
    print(f"wrote {args.out}: {title}")
    if args.process:
        pred = codes_to_images(tok, res.predictions[:, 0])
        kept = masked_overlay(pred, res.states[:, 0] == transformer.cfg.mask_id, grid)
        decoding_process_figure([(names[label], kept.cpu(), pred.cpu())], grid, f"decoding steps: {title}", args.process)
        print(f"wrote {args.process}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
