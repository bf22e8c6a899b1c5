"""Evaluate generated samples (or the floors) against the real test set.

    python -m maskgit_lab.evaluate --config experiments/fmnist.yaml --n 10000 [--source samples]
        [--schedule cosine --steps 8 ...] [--extractor inception-v3-compat] [--cas] [--nll]
        [--out results/fmnist/eval-samples.json]

``--source samples``: N class-balanced samples from the trained transformer, streamed
batch by batch into the feature extractor. ``--source reconstructions``: the tokenizer's
reconstructions of the test images (its ceiling). ``--source train``: N real train images
(the data floor: the best a perfect generator could score at this N).
The reference is the first N test images; its features are cached by content key.
``--cas`` adds the classification accuracy score (a classifier trained on the N images,
tested on the real test set); ``--nll`` the masked-token NLL of the test split's tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from maskgit_lab.config import ExperimentConfig, load_config
from maskgit_lab.data.tokens import data_key
from maskgit_lab.errors import ConfigError, add_device_argument, cli_errors
from maskgit_lab.eval.metrics import (
    CLASS_CONSISTENCY,
    EXTRACTORS,
    METRIC_KEYS,
    Features,
    batches,
    build_extractor,
    cached_reference,
    check_extractor,
    compute_metrics,
    load_statistics,
    metrics_against_statistics,
    reference_key,
)
from maskgit_lab.io import atomic_write_text, file_sha256

SOURCES = ("samples", "reconstructions", "train")
PREPROCESSING = "fmnist-pad32-[-1,1]"


class Evaluation:
    """One extractor and the reference, loaded once, scoring any stream of images against
    it (used by this command and the sweeps). The reference: the cached features of the
    first ``n`` real test images (Fashion-MNIST test, or the ImageFolder val split), or FID
    statistics from an ``.npz`` (``evaluator.reference_stats``, e.g. ImageNet's)."""

    def __init__(self, cfg: ExperimentConfig, n: int, extractor: str | None = None, device: str = "cpu",
                 batch_size: int = 500) -> None:
        from maskgit_lab.data.imagefolder import build_image_datamodule

        self.cfg, self.n, self.batch_size = cfg, n, batch_size
        self.ext = build_extractor(check_extractor(extractor or cfg.evaluator.extractor), cfg, device)
        self.stats = None
        stats_file = cfg.evaluator.reference_stats
        if stats_file:
            if not Path(stats_file).is_file():
                raise ConfigError(f"evaluator.reference_stats={stats_file!r} not found (an .npz with mu and sigma)")
            self.datamodule = self.test = None
            self.reference, self.cache_hit = None, False
            self.reference_key = f"stats:{file_sha256(stats_file)}"
            self.reference_name = f"statistics {Path(stats_file).name}"
            return
        self.datamodule = build_image_datamodule(cfg.data, batch_size)
        self.test = self.datamodule.dataset("test")
        if not 2 <= n <= len(self.test):
            raise ConfigError(f"N={n} must lie between 2 and the {len(self.test)} test images")
        prep = PREPROCESSING if cfg.data.name == "fmnist" else f"center-crop-{cfg.data.image_size}-[-1,1]"
        key = reference_key(self.ext, "test", data_key(cfg.data), n, prep)
        self.reference, self.cache_hit = cached_reference(
            cfg.run_dir / "reference", key,
            lambda: self.features(self.real_images("test"), desc=f"reference features ({self.ext.name})"),
        )
        self.reference_key = key
        self.reference_name = f"{cfg.data.name}-test[:{n}]"

    def _split(self, split: str):
        if self.datamodule is None:
            raise ConfigError("real images are not available when the reference is given as statistics")
        return self.datamodule.dataset(split)

    def real_images(self, split: str) -> Iterator[torch.Tensor]:
        """The first n images of a split, in batches."""
        ds = self._split(split)
        if hasattr(ds, "tensors"):
            return batches(ds.tensors[0][: self.n], self.batch_size)
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(Subset(ds, range(min(self.n, len(ds)))), batch_size=self.batch_size,
                            num_workers=self.cfg.data.num_workers)
        return (x for x, _ in loader)

    def real_labels(self, split: str) -> torch.Tensor:
        ds = self._split(split)
        if hasattr(ds, "tensors"):
            return ds.tensors[1][: self.n]
        return torch.tensor([ds[i][1] for i in range(min(self.n, len(ds)))])

    def features(self, images: Iterable[torch.Tensor], desc: str | None = None) -> Features:
        return self.ext(images, total=self.n, desc=desc)

    def score(self, generated: Features, seed: int, labels: torch.Tensor | None = None) -> dict:
        """Metrics against the reference; fewer generated images than n are scored against
        the first as many reference images (the tuner's small-N pruning stage)."""
        n = len(generated)
        if self.stats is not None or self.cfg.evaluator.reference_stats:
            if self.stats is None:
                self.stats = load_statistics(self.cfg.evaluator.reference_stats, generated.features.shape[1])
            result = metrics_against_statistics(generated, self.stats, extractor=self.ext.name,
                                                reference_name=self.reference_name, seed=seed, labels=labels)
            result["extractor_identity"] = self.ext.identity
            return result
        reference, name = self.reference, self.reference_name
        if n < self.n:
            reference, name = Features(reference.features[:n], None), f"{name}[:{n}]"
        result = compute_metrics(generated, reference, extractor=self.ext.name,
                                 reference_name=name, seed=seed, labels=labels)
        result["extractor_identity"] = self.ext.identity
        return result


def held_out_codes(cfg: ExperimentConfig, tokenizer, tokenizer_sha: str, split: str = "test", limit: int = 0):
    """(codes [M, N], labels [M]) of a split: from the token cache if present, else the first
    ``limit`` images (0: all) encoded now."""
    from maskgit_lab.data.tokens import cache_path, encode_split, load_token_cache

    path = cache_path(cfg.run_dir, tokenizer_sha, cfg.data)
    if cfg.data.token_shards:
        from maskgit_lab.data.shards import ShardDataset

        ds = ShardDataset(cfg.data.token_shards, "val" if split == "test" else split)
        if ds.index["tokenizer_sha"] != tokenizer_sha:
            raise ConfigError(f"token shards {cfg.data.token_shards} come from another tokenizer than the model's")
        m = min(limit or len(ds), len(ds))
        pairs = [ds[i] for i in range(m)]
        return torch.stack([c for c, _ in pairs]), torch.tensor([y for _, y in pairs])
    if path.is_file():
        cache = load_token_cache(path, tokenizer_sha)
        codes, labels = cache["codes"][split], cache["labels"][split]
    else:
        from maskgit_lab.data.imagefolder import build_image_datamodule

        ds = build_image_datamodule(cfg.data, 256).dataset(split)
        if limit and limit < len(ds):
            from torch.utils.data import Subset

            ds = Subset(ds, range(limit))
        codes, labels = encode_split(tokenizer, ds, desc=split)
    return codes.reshape(codes.shape[0], -1).long(), labels


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
    from maskgit_lab.eval.evaluator import classification_accuracy_score
    from maskgit_lab.eval.nll import masked_token_nll
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
    parser.add_argument("--extractor", help=f"one of: {', '.join(EXTRACTORS)} (default: the config's evaluator.extractor)")
    add_device_argument(parser)
    parser.add_argument("--cas", action="store_true", help="also the classification accuracy score (trains a classifier)")
    parser.add_argument("--nll", action="store_true", help="also the masked-token NLL on the test tokens")
    parser.add_argument("--out", help="JSON file for the result (default: results/<experiment>/eval-<source>.json)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. evaluator.inception_weights=FILE")
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_extractor(args.extractor or cfg.evaluator.extractor)
    if args.cas and cfg.data.name != "fmnist":
        raise ConfigError("--cas trains the Fashion-MNIST evaluator's classifier; it needs data.name=fmnist")
    ckpt = args.checkpoint or str(run_paths(cfg).transformer_file)
    needs_model = args.source != "train" or args.nll
    if needs_model and not Path(ckpt).is_file():
        raise ConfigError(f"no trained transformer at {ckpt}: run `python -m maskgit_lab.train all` first")
    models = load_models(ckpt, device=args.device) if needs_model else None
    dcfg = None
    if args.source == "samples":
        transformer, tok, tcfg, meta = models
        dcfg = decode_config_from_args(tcfg.sampling, args, transformer.cfg.num_tokens)
        check_guidance(tcfg.transformer_train.class_dropout, dcfg)

    ev = Evaluation(cfg, args.n, args.extractor, args.device, args.batch_size)
    print(f"reference: first {args.n} test images, {'cached' if ev.cache_hit else 'computed'} ({ev.reference_key})")

    info: dict = {}
    start = time.time()
    if args.source == "train":
        labels = ev.real_labels("train")
        generated = ev.features(ev.real_images("train"), desc="train features")
        images = torch.cat(list(ev.real_images("train"))) if args.cas else None
    else:
        transformer, tok, tcfg, meta = models
        if args.source == "reconstructions":
            labels = ev.real_labels("test")
            recon = [tok(x.to(args.device))[0].clamp(-1, 1).cpu() for x in ev.real_images("test")]
            generated = ev.features(recon, desc="reconstruction features")
            images = torch.cat(recon)
        else:
            labels = torch.arange(args.n) % transformer.cfg.num_classes
            stream = iter_images(transformer, tok, labels, dcfg, args.seed, args.batch_size)
            kept: list[torch.Tensor] = []
            if args.cas:  # keep the images for the classifier, still scoring them as they stream
                stream = (kept.append(x) or x for x in stream)
            generated = ev.features(stream, desc="sample features")
            images = torch.cat(kept) if args.cas else None
            info = {"decode": dcfg.__dict__, "checkpoint": ckpt, "git_commit": meta.get("git_commit")}
    seconds = time.time() - start

    result = ev.score(generated, args.seed, labels if args.source == "samples" else None)
    result.update(source=args.source, seconds=round(seconds, 1), **info)
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
    out = Path(args.out or f"results/{cfg.name}/eval-{args.source}.json")
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    print_metrics(result)
    print(f"{args.source}: N={args.n}, extractor {ev.ext.name}, {seconds:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
