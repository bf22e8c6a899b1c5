"""Sample-quality metrics through torch-fidelity, on features streamed from any image source.

Features are extracted batch by batch (from the sampler or a dataset; nothing is written
to disk), then torch-fidelity's own functions compute FID, KID, precision/recall and the
Inception Score. Class consistency (accuracy of the evaluator on class-conditional
samples against the requested class) is the suite's own. Every result records N, the
feature extractor, the reference set and the seed next to the values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from tqdm.auto import tqdm

from maskgit_lab.errors import ConfigError
from maskgit_lab.io import atomic_write

Tensor = torch.Tensor

# Result keys (torch-fidelity's names where it defines the metric).
FID = "frechet_inception_distance"
KID_MEAN = "kernel_inception_distance_mean"
KID_STD = "kernel_inception_distance_std"
PRECISION = "precision"
RECALL = "recall"
F_SCORE = "f_score"
IS_MEAN = "inception_score_mean"
IS_STD = "inception_score_std"
CLASS_CONSISTENCY = "class_consistency"
METRIC_KEYS = (FID, KID_MEAN, KID_STD, PRECISION, RECALL, F_SCORE, IS_MEAN, IS_STD, CLASS_CONSISTENCY)


@dataclass
class Features:
    """Per-image features [N, D] and, when the extractor has a classifier, logits [N, C]."""

    features: Tensor
    logits: Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]


class FeatureExtractor:
    """A named network mapping images [B, C, H, W] in [-1, 1] to ``Features``.

    ``identity`` is a content key (e.g. the weights file's hash) so cached reference
    features are never reused across different networks.
    """

    def __init__(self, name: str, identity: str, fn: Callable[[Tensor], tuple[Tensor, Tensor | None]]) -> None:
        self.name, self.identity, self.fn = name, identity, fn

    @torch.inference_mode()
    def __call__(self, images: Iterable[Tensor], total: int | None = None, desc: str | None = None) -> Features:
        """Features of every batch; a progress bar (in images) when ``desc`` is given."""
        feats, logits = [], []
        bar = tqdm(total=total, desc=desc, unit="img", disable=desc is None, mininterval=2.0, leave=False)
        for batch in images:
            bar.update(batch.shape[0])
            f, lg = self.fn(batch)
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
        bar.close()
        return Features(torch.cat(feats), torch.cat(logits) if logits else None)


def fmnist_evaluator(cfg, device: str = "cpu") -> FeatureExtractor:
    """The suite's Fashion-MNIST classifier (trained and cached on first use)."""
    from maskgit_lab.eval.evaluator import load_evaluator, train_evaluator

    net, _, sha = load_evaluator(train_evaluator(cfg))
    net.to(device)
    return FeatureExtractor("fmnist-evaluator", sha, lambda x: net(x.to(device).float()))


def inception_v3_compat(cfg, device: str = "cpu") -> FeatureExtractor:
    """torch-fidelity's standard FID Inception from a local weights file (see eval.inception)."""
    from maskgit_lab.eval.inception import InceptionFeatures, default_weights_path

    net = InceptionFeatures(cfg.evaluator.inception_weights or default_weights_path(), device)
    return FeatureExtractor("inception-v3-compat", net.sha, net)


# Feature extractor registry: name -> builder(experiment config, device).
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "fmnist-evaluator": fmnist_evaluator,
    "inception-v3-compat": inception_v3_compat,
}


def check_extractor(name: str) -> str:
    if name not in EXTRACTORS:
        raise ConfigError(f"unknown feature extractor {name!r}; valid: {', '.join(EXTRACTORS)}")
    return name


def build_extractor(name: str, cfg, device: str = "cpu") -> FeatureExtractor:
    return EXTRACTORS[check_extractor(name)](cfg, device)


def batches(images: Tensor, batch_size: int) -> Iterable[Tensor]:
    yield from images.split(batch_size)


def load_statistics(path: str | Path, dim: int) -> dict:
    """Reference FID statistics from an ``.npz`` with ``mu`` [D] and ``sigma`` [D, D]."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"reference statistics {str(p)!r} not found (an .npz with mu and sigma)")
    try:
        with np.load(p, allow_pickle=False) as z:
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    except (KeyError, ValueError, OSError) as exc:
        raise ConfigError(f"{p} is not an .npz of FID statistics with arrays mu and sigma ({exc})") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ConfigError(f"{p}: mu {mu.shape} and sigma {sigma.shape} do not fit the extractor's {dim}-d features")
    return {"mu": mu, "sigma": sigma}


def metrics_against_statistics(generated: Features, stats: dict, *, extractor: str, reference_name: str,
                               seed: int, labels: Tensor | None = None) -> dict:
    """FID (and IS, class consistency) against reference statistics only: KID and
    precision/recall need the reference features and are reported unavailable."""
    mine = fid_features_to_statistics(generated.features.double())
    out: dict = {FID: fid_statistics_to_metric(mine, stats, verbose=False)[FID]}
    out.update({KID_MEAN: None, KID_STD: None, PRECISION: None, RECALL: None, F_SCORE: None})
    notes = {k: "unavailable: the reference is given as FID statistics only" for k in (KID_MEAN, PRECISION, RECALL)}
    if generated.logits is not None:
        out.update(isc_features_to_metric(generated.logits, splits=10, shuffle=True, rng_seed=seed))
    else:
        out[IS_MEAN] = out[IS_STD] = None
        notes[IS_MEAN] = f"unavailable: extractor {extractor} has no classifier logits"
    return {"metrics": out, "n_generated": len(generated), "n_reference": None, "extractor": extractor,
            "reference": reference_name, "seed": seed, "notes": notes}


def compute_metrics(
    generated: Features,
    reference: Features,
    *,
    extractor: str,
    reference_name: str,
    seed: int,
    labels: Tensor | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    prc_neighborhood: int = 3,
) -> dict:
    """All metrics of ``generated`` against ``reference`` features, with their provenance.

    IS needs logits; where the extractor has none it is reported as unavailable (None with
    a reason), never as a number. ``labels`` [N] (the requested classes) enables class
    consistency.
    """
    n_gen, n_ref = len(generated), len(reference)
    stats_g = fid_features_to_statistics(generated.features)
    stats_r = fid_features_to_statistics(reference.features)
    out: dict = {FID: fid_statistics_to_metric(stats_g, stats_r, verbose=False)[FID]}
    subset = min(kid_subset_size, n_gen, n_ref)
    # torch-fidelity's defaults: cubic polynomial kernel, gamma = 1/D, coef0 = 1.
    out.update(kid_features_to_metric(generated.features, reference.features, kid_subsets=kid_subsets,
                                      kid_subset_size=subset, rng_seed=seed, verbose=False))
    out.update(prc_features_to_metric(generated.features, reference.features, prc_neighborhood=prc_neighborhood,
                                      prc_batch_size=10000, save_cpu_ram=False, verbose=False))
    notes = {}
    if generated.logits is not None:
        out.update(isc_features_to_metric(generated.logits, splits=10, shuffle=True, rng_seed=seed))
        if labels is not None:
            out[CLASS_CONSISTENCY] = float((generated.logits.argmax(1) == labels.cpu()).double().mean())
    else:
        out[IS_MEAN] = out[IS_STD] = None
        notes[IS_MEAN] = f"unavailable: extractor {extractor} has no classifier logits"
    return {
        "metrics": out,
        "n_generated": n_gen,
        "n_reference": n_ref,
        "extractor": extractor,
        "reference": reference_name,
        "seed": seed,
        "kid_subset_size": subset,
        "prc_neighborhood": prc_neighborhood,
        "notes": notes,
    }


def reference_key(extractor: FeatureExtractor, split: str, data_key: str, n: int, preprocessing: str) -> str:
    blob = json.dumps([extractor.name, extractor.identity, split, data_key, n, preprocessing])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_reference(
    cache_dir: Path, key: str, compute: Callable[[], Features]
) -> tuple[Features, bool]:
    """Reference features from ``cache_dir/<key>.pt`` or computed once and cached.

    Returns (features, whether the cache was hit).
    """
    path = Path(cache_dir) / f"reference-{key}.pt"
    if path.is_file():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return Features(d["features"], d.get("logits")), True
    feats = compute()
    atomic_write(path, lambda p: torch.save({"features": feats.features, "logits": feats.logits}, p))
    return feats, False
