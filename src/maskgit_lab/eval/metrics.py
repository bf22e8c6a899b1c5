"""Sample-quality metrics through torch-fidelity, on features streamed from any image source.

Features are extracted batch by batch (from the sampler or a dataset; nothing is written
to disk), then torch-fidelity's own functions compute FID, KID, precision/recall and the
Inception Score. Class consistency (accuracy of the evaluator on class-conditional
samples against the requested class) is the suite's own. Every result records N, the
feature extractor, the reference set and the seed next to the values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
from torch_fidelity.metric_prc import prc_features_to_metric
from tqdm.auto import tqdm

from maskgit_lab.config import EXTRACTOR_NAMES, check_extractor
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluator import load_evaluator, train_evaluator
from maskgit_lab.eval.inception import InceptionFeatures, default_weights_path
from maskgit_lab.io import atomic_write, content_key

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


def quantize_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] snapped to the 256 levels of an 8-bit image, as real images are: a
    generator's continuous outputs get no advantage (or penalty) real data cannot have.
    Images already on the grid (real ones) come back unchanged."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


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
            f, lg = self.fn(quantize_uint8(batch))
            feats.append(f.double().cpu())
            if lg is not None:
                logits.append(lg.double().cpu())
        bar.close()
        return Features(torch.cat(feats), torch.cat(logits) if logits else None)


def fmnist_evaluator(cfg, device: str = "cpu") -> FeatureExtractor:
    """The suite's Fashion-MNIST classifier (trained and cached on first use)."""
    net, _, sha = load_evaluator(train_evaluator(cfg))
    return classifier_extractor(net, sha, device)


def classifier_extractor(net: torch.nn.Module, identity: str, device: str = "cpu") -> FeatureExtractor:
    """A FeatureExtractor over an evaluator classifier (features, logits)."""
    # channels-last, in chunks of 128 images: the fastest layout on the CPU (same features)
    net = net.to(device).to(memory_format=torch.channels_last)

    def features(x: Tensor) -> tuple[Tensor, Tensor]:
        parts = [net(c.to(device).float().contiguous(memory_format=torch.channels_last)) for c in x.split(128)]
        return torch.cat([f for f, _ in parts]), torch.cat([lg for _, lg in parts])

    return FeatureExtractor("fmnist-evaluator", identity, features)


def inception_v3_compat(cfg, device: str = "cpu") -> FeatureExtractor:
    """torch-fidelity's standard FID Inception from a local weights file (see eval.inception)."""
    net = InceptionFeatures(cfg.evaluator.inception_weights or default_weights_path(), device)
    return FeatureExtractor("inception-v3-compat", net.sha, net)


# Feature extractor registry: name -> builder(experiment config, device); the names are
# config.EXTRACTOR_NAMES, which the config validates without importing this module.
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = dict(
    zip(EXTRACTOR_NAMES, (fmnist_evaluator, inception_v3_compat), strict=True))


def build_extractor(name: str, cfg, device: str = "cpu") -> FeatureExtractor:
    return EXTRACTORS[check_extractor(name)](cfg, device)


def batches(images: Tensor, batch_size: int) -> Iterable[Tensor]:
    yield from images.split(batch_size)


def load_statistics(path: str | Path, dim: int) -> dict:
    """Reference FID statistics from an ``.npz`` with ``mu`` [D] and ``sigma`` [D, D]."""
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
    # Subsets smaller than N: with subset size N every subset is the same set (a zero spread
    # that means nothing); half of N leaves the 100 subsets room to differ.
    subset = max(2, min(kid_subset_size, n_gen // 2, n_ref // 2))
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


def kid_features_to_metric(features_1: Tensor, features_2: Tensor, *, kid_subsets: int, kid_subset_size: int,
                           rng_seed: int, verbose: bool = False) -> dict:
    """torch-fidelity's KID (cubic polynomial kernel, gamma = 1/D, coef0 = 1; the unbiased
    MMD^2 of ``kid_subsets`` random subsets, drawn by the same RandomState calls): the same
    numbers (to float64 rounding) at a fraction of the cost.

    The kernel matrices are computed once over all features. A subset's kernel sums are
    quadratic forms of its 0/1 membership vector w (sum over the subset's pairs of K =
    w^T K w), so all subsets' sums come from one matrix product per kernel instead of
    copying 3 x ``kid_subsets`` sub-matrices (N = 2000: 2.4 s -> 0.2 s)."""
    x, y = features_1.double().cpu().numpy(), features_2.double().cpu().numpy()
    n1, n2 = len(x), len(y)
    m = kid_subset_size
    if min(n1, n2) < m:
        raise ValueError(f"KID subset size {m} exceeds the samples ({n1}, {n2})")
    gamma = 1.0 / x.shape[1]
    k11, k22, k12 = ((a @ b.T * gamma + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    rng = np.random.RandomState(rng_seed)
    w1, w2 = np.zeros((kid_subsets, n1)), np.zeros((kid_subsets, n2))
    for i in range(kid_subsets):  # the draws in torch-fidelity's order
        w1[i, rng.choice(n1, m, replace=False)] = 1.0
        w2[i, rng.choice(n2, m, replace=False)] = 1.0
    # off-diagonal sums within each subset, and the cross sum between the paired subsets
    xx = ((w1 @ k11) * w1).sum(1) - w1 @ np.diagonal(k11)
    yy = ((w2 @ k22) * w2).sum(1) - w2 @ np.diagonal(k22)
    xy = ((w1 @ k12) * w2).sum(1)
    mmds = (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)
    return {KEY_METRIC_KID_MEAN: float(np.mean(mmds)), KEY_METRIC_KID_STD: float(np.std(mmds))}


def reference_key(extractor: FeatureExtractor, split: str, data_key: str, n: int, preprocessing: str) -> str:
    return content_key([extractor.name, extractor.identity, split, data_key, n, preprocessing])


def cached_reference(
    cache_dir: Path, key: str, compute: Callable[[], Features]
) -> tuple[Features, bool]:
    """Reference features from ``cache_dir/<key>.pt`` or computed once and cached.

    Returns (features, whether the cache was hit).
    """
    path = Path(cache_dir) / f"reference-{key}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return Features(d["features"], d.get("logits")), True
        except Exception as exc:  # noqa: BLE001 - truncated or foreign: never trusted, rebuilt
            print(f"warning: reference cache {path} is unreadable ({type(exc).__name__}); computing it again",
                  file=sys.stderr)
            path.unlink()
    feats = compute()
    atomic_write(path, lambda p: torch.save({"features": feats.features, "logits": feats.logits}, p))
    return feats, False
