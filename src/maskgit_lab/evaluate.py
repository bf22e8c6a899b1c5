"""Evaluate generated samples (or the floors) against the real test set.

    python -m maskgit_lab.evaluate --config experiments/fmnist.yaml --n 10000 [--source samples]
        [--schedule cosine --steps 8 ...] [--out results/fmnist/eval.json]

``--source samples``: N class-balanced samples from the trained transformer, streamed
batch by batch into the feature extractor. ``--source reconstructions``: the tokenizer's
reconstructions of the test images (its ceiling). ``--source train``: N real train images
(the data floor: the best a perfect generator could score at this N).
The reference is the first N test images; its features are cached by content key.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from maskgit_lab.config import load_config
from maskgit_lab.data.tokens import data_key
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.eval.evaluator import train_evaluator
from maskgit_lab.eval.metrics import (
    CLASS_CONSISTENCY,
    EXTRACTORS,
    METRIC_KEYS,
    batches,
    build_extractor,
    cached_reference,
    compute_metrics,
    reference_key,
)
from maskgit_lab.io import atomic_write_text

SOURCES = ("samples", "reconstructions", "train")
PREPROCESSING = "fmnist-pad32-[-1,1]"


def _image_batches(dataset, n: int, batch_size: int) -> Iterator[torch.Tensor]:
    return batches(dataset.tensors[0][:n], batch_size)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    from maskgit_lab.data.fmnist import FashionMNISTDataModule
    from maskgit_lab.generate import check_guidance, iter_images
    from maskgit_lab.sample import add_decode_arguments, decode_config_from_args, load_models
    from maskgit_lab.train import run_paths

    parser = argparse.ArgumentParser(prog="python -m maskgit_lab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--checkpoint", help="transformer model file (default: the config's trained one)")
    parser.add_argument("--source", choices=SOURCES, default="samples")
    parser.add_argument("--n", type=int, default=10000, help="number of images on each side (<= 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--extractor", default="fmnist-evaluator", help=f"one of: {', '.join(EXTRACTORS)}")
    parser.add_argument("--out", help="JSON file for the result (default: results/<experiment>/eval-<source>.json)")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.extractor not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {args.extractor!r}; valid: {', '.join(EXTRACTORS)}")
    if cfg.data.name != "fmnist":
        raise ConfigError("evaluate supports data.name=fmnist so far (the Inception path is still to come)")
    dm = FashionMNISTDataModule(cfg.data)
    test = dm.dataset("test")
    if not 2 <= args.n <= len(test):
        raise ConfigError(f"--n={args.n} must lie between 2 and the {len(test)} test images")

    ext = build_extractor(args.extractor, train_evaluator(cfg))
    ref_key = reference_key(ext, "test", data_key(cfg.data), args.n, PREPROCESSING)
    reference, hit = cached_reference(
        cfg.run_dir / "reference", ref_key, lambda: ext(_image_batches(test, args.n, args.batch_size))
    )
    print(f"reference: first {args.n} test images, {'cached' if hit else 'computed'} ({ref_key})")

    labels, decode_info = None, {}
    start = time.time()
    if args.source == "train":
        generated = ext(_image_batches(dm.dataset("train"), args.n, args.batch_size))
    else:
        ckpt = args.checkpoint or str(run_paths(cfg).transformer_file)
        if not Path(ckpt).is_file():
            raise ConfigError(f"no trained transformer at {ckpt}: run `python -m maskgit_lab.train all` first")
        transformer, tok, tcfg, meta = load_models(ckpt)
        if args.source == "reconstructions":
            generated = ext(tok(x)[0].clamp(-1, 1) for x in _image_batches(test, args.n, args.batch_size))
        else:
            dcfg = decode_config_from_args(tcfg.sampling, args, transformer.cfg.num_tokens)
            check_guidance(tcfg.transformer_train.class_dropout, dcfg)
            labels = torch.arange(args.n) % transformer.cfg.num_classes
            generated = ext(iter_images(transformer, tok, labels, dcfg, args.seed, args.batch_size))
            decode_info = {"decode": dcfg.__dict__, "checkpoint": ckpt, "git_commit": meta.get("git_commit")}
    seconds = time.time() - start

    result = compute_metrics(generated, reference, extractor=ext.name, reference_name=f"fmnist-test[:{args.n}]",
                             seed=args.seed, labels=labels)
    result.update(source=args.source, seconds=round(seconds, 1), extractor_identity=ext.identity, **decode_info)
    out = Path(args.out or f"results/{cfg.name}/eval-{args.source}.json")
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    for k in METRIC_KEYS:
        v = result["metrics"].get(k)
        if k == CLASS_CONSISTENCY and v is None:
            continue
        print(f"{k:34s} {v if v is None else f'{v:.4f}'}")
    print(f"{args.source}: N={args.n}, extractor {ext.name}, {seconds:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
