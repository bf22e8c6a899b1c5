"""Evaluate generated samples (or the floors) against the real test set.

    python -m maskgit_lab.evaluate --config experiments/fmnist.yaml --n 10000 [--source samples]
        [--schedule cosine --steps 8 ...] [--extractor inception-v3-compat] [--cas] [--nll]
        [--out results/fmnist/evaluation/eval-samples.json]

``--source samples``: N class-balanced samples from the trained transformer, streamed
batch by batch into the feature extractor. ``--source reconstructions``: the tokenizer's
reconstructions of the test images (its ceiling). ``--source train``: N real train images
(the data floor: the best a perfect generator could score at this N). Class consistency
is the evaluator's accuracy against the requested classes (samples) or the true labels.
The reference is the first N test images; its features are cached by content key.
``--cas`` adds the classification accuracy score (a classifier trained on the N images,
tested on the real test set); ``--nll`` the masked-token NLL of the test split's tokens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from maskgit_lab.checkpoints import load_model, load_models
from maskgit_lab.cli import add_decode_arguments, add_device_argument, decode_config_from_args
from maskgit_lab.config import EXTRACTOR_NAMES, check_extractor, load_config
from maskgit_lab.decoding.generate import check_guidance, for_sampling, iter_images
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.eval.evaluation import Evaluation, held_out_codes
from maskgit_lab.eval.evaluator import classification_accuracy_score
from maskgit_lab.eval.metrics import CLASS_CONSISTENCY, METRIC_KEYS
from maskgit_lab.eval.nll import masked_token_nll
from maskgit_lab.hardware import autocast, dtype_name, inference_dtype
from maskgit_lab.identity import model_file
from maskgit_lab.io import atomic_write_text, check_output, git_commit

SOURCES = ("samples", "reconstructions", "train")


def print_metrics(result: dict) -> None:
    for k in METRIC_KEYS:
        v = result["metrics"].get(k)
        if k == CLASS_CONSISTENCY and v is None:
            continue
        print(f"{k:34s} {v if v is None else f'{v:.4f}'}")
    for k in ("cas_top1", "cas_top5", "nll"):
        if k in result:
            print(f"{k:34s} {result[k]:.4f}")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--checkpoint", help="transformer model file (default: the config's trained one)")
    parser.add_argument("--source", choices=SOURCES, default="samples")
    parser.add_argument("--n", type=int, default=10000, help="number of images on each side (<= 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--extractor", help=f"one of: {', '.join(EXTRACTOR_NAMES)} (default: the config's evaluator.extractor)")
    add_device_argument(parser)
    parser.add_argument("--cas", action="store_true", help="also the classification accuracy score (trains a classifier)")
    parser.add_argument("--nll", action="store_true", help="also the masked-token NLL on the test tokens")
    parser.add_argument("--out", help="JSON file for the result (default: results/<experiment>/evaluation/eval-<source>.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. evaluator.inception_weights=FILE")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.batch_size < 1 or args.n < 2:
        raise ConfigError(f"--batch-size must be at least 1 and --n at least 2 (got {args.batch_size}, {args.n})")
    out = check_output(args.out or f"results/{cfg.name}/evaluation/eval-{args.source}.json", "--out")
    check_extractor(args.extractor or cfg.evaluator.extractor)
    if args.cas and cfg.data.name != "fmnist":
        raise ConfigError("--cas trains the Fashion-MNIST evaluator's classifier; it needs data.name=fmnist")
    ckpt = args.checkpoint or str(model_file(cfg, "transformer"))
    # the experiment's own reconstructions need its tokenizer only (no transformer trained yet)
    tokenizer_only = args.source == "reconstructions" and not args.nll and not args.checkpoint
    needs_model = (args.source != "train" or args.nll) and not tokenizer_only
    if needs_model and not Path(ckpt).is_file():
        raise ConfigError(f"no trained transformer at {ckpt}: run `python -m maskgit_lab.train all` first")
    models = load_models(ckpt, device=args.device) if needs_model else None
    tok = models[1] if models is not None else None
    if tokenizer_only:
        tok_file = model_file(cfg, "tokenizer")
        if not tok_file.is_file():
            raise ConfigError(f"no trained tokenizer at {tok_file}: run `python -m maskgit_lab.train tokenizer` first")
        tok = load_model(tok_file, "tokenizer")[0].to(args.device)
    dcfg = None
    if args.source == "samples":
        transformer, tok, tcfg, meta = models
        dcfg = decode_config_from_args(tcfg.sampling, args, transformer.cfg.num_tokens, transformer.cfg.codebook_size)
        check_guidance(tcfg.transformer_train.class_dropout, dcfg)

    ev = Evaluation(cfg, args.n, args.extractor, args.device, args.batch_size)
    print(f"reference: first {args.n} test images, {'cached' if ev.cache_hit else 'computed'} ({ev.reference_key})")

    dtype, why = inference_dtype(cfg.inference_precision, args.device)
    print(f"sampling precision {dtype_name(dtype)} ({why})")
    info: dict = {"sampling_precision": dtype_name(dtype)}
    start = time.time()
    if args.source == "train":
        labels = ev.real_labels("train")
        generated = ev.features(ev.real_images("train"), desc="train features")
        images = torch.cat(list(ev.real_images("train"))) if args.cas else None
    elif args.source == "reconstructions":
        labels = ev.real_labels("test")
        with torch.inference_mode(), autocast(args.device, dtype):  # no graph kept across batches
            recon = [tok(x.to(args.device))[0].clamp(-1, 1).float().cpu() for x in ev.real_images("test")]
        generated = ev.features(recon, desc="reconstruction features")
        images = torch.cat(recon)
    else:
        transformer, tok, tcfg, meta = models
        labels = torch.arange(args.n) % transformer.cfg.num_classes
        stream = iter_images(for_sampling(transformer, dtype), for_sampling(tok, dtype), labels, dcfg, args.seed,
                             args.batch_size)
        kept: list[torch.Tensor] = []
        if args.cas:  # keep the images for the classifier, still scoring them as they stream
            stream = (kept.append(x) or x for x in stream)
        generated = ev.features(stream, desc="sample features")
        images = torch.cat(kept) if args.cas else None
        info.update(decode=dcfg.__dict__, checkpoint=ckpt, model_git_commit=meta.get("git_commit"))
    seconds = time.time() - start

    # class consistency: the requested classes of samples; for real images and reconstructions
    # their true labels (the evaluator's accuracy on them: the ceiling of the samples' value)
    result = ev.score(generated, args.seed, labels)
    result.update(source=args.source, seconds=round(seconds, 1), git_commit=git_commit() or "unknown", **info)
    if args.cas:
        print(f"CAS: training a classifier on the {args.n} {args.source} images for {cfg.evaluator.cas_steps} steps")
        result.update(classification_accuracy_score(images, labels, ev.test, cfg.evaluator, cfg.evaluator.cas_steps,
                                                    seed=args.seed))
    if args.nll:
        transformer, tok, tcfg, meta = models
        codes, code_labels = held_out_codes(cfg, tok, meta["tokenizer_sha"])
        nll = masked_token_nll(transformer, codes, code_labels, tcfg.transformer_train.schedule,
                               draws=cfg.evaluator.nll_draws, seed=args.seed)
        result["nll"] = nll.pop("nll")
        result["nll_details"] = nll
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    print_metrics(result)
    print(f"{args.source}: N={args.n}, extractor {ev.ext.name}, {seconds:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
