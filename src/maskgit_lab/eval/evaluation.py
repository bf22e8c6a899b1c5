"""The reusable evaluation: one feature extractor and the reference set, loaded once, scoring
any stream of images (used by ``python -m maskgit_lab.evaluate`` and by every sweep), and
the held-out token grids the NLL is measured on."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from maskgit_lab.config import ExperimentConfig, check_extractor
from maskgit_lab.data import build_image_datamodule
from maskgit_lab.data.shards import ShardDataset
from maskgit_lab.data.tokens import cache_path, data_key, encode_split, load_token_cache
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.metrics import (
    Features,
    batches,
    build_extractor,
    cached_reference,
    compute_metrics,
    load_statistics,
    metrics_against_statistics,
    reference_key,
)
from maskgit_lab.io import file_sha256

PREPROCESSING = "fmnist-pad32-[-1,1]"


class Evaluation:
    """One extractor and the reference, loaded once, scoring any stream of images against
    it (used by this command and the sweeps). The reference: the cached features of the
    first ``n`` real test images (Fashion-MNIST test, or the ImageFolder val split), or FID
    statistics from an ``.npz`` (``evaluator.reference_stats``, e.g. ImageNet's)."""

    def __init__(self, cfg: ExperimentConfig, n: int, extractor: str | None = None, device: str = "cpu",
                 batch_size: int = 500) -> None:
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
    path = cache_path(cfg.run_dir, tokenizer_sha, cfg.data)
    if cfg.data.token_shards:
        ds = ShardDataset(cfg.data.token_shards, "val" if split == "test" else split)
        if ds.index["tokenizer_sha"] != tokenizer_sha:
            raise ConfigError(f"token shards {cfg.data.token_shards} come from another tokenizer than the model's")
        m = min(limit or len(ds), len(ds))
        pairs = [ds[i] for i in range(m)]
        return torch.stack([c for c, _ in pairs]), torch.tensor([y for _, y in pairs])
    cache = None
    if path.is_file():
        try:
            cache = load_token_cache(path, tokenizer_sha)
        except ConfigError as exc:  # never trusted: encode the split now instead
            print(f"warning: {exc}; encoding the {split} split", file=sys.stderr)
    if cache is not None:
        codes, labels = cache["codes"][split], cache["labels"][split]
    else:
        ds = build_image_datamodule(cfg.data, 256).dataset(split)
        if limit and limit < len(ds):
            ds = Subset(ds, range(limit))
        codes, labels = encode_split(tokenizer, ds, desc=split)
    return codes.reshape(codes.shape[0], -1).long(), labels
