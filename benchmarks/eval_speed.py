"""Speed of the evaluation path: extractor images/s and a full 10k-sample metric computation.

    python benchmarks/eval_speed.py [--config experiments/fmnist.yaml] [--n 10000]

Uses the experiment's trained evaluator if present (else random weights of the same
shape: the speed is the same). Prints images/s of feature extraction and the wall time
of FID + KID + precision/recall + IS + class consistency on N generated vs N reference
features (sampling time not included: see the sampler benchmarks).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from maskgit_lab.config import load_config
from maskgit_lab.eval.evaluator import FMNISTClassifier, evaluator_path, load_evaluator
from maskgit_lab.eval.inception import InceptionFeatures, default_weights_path
from maskgit_lab.eval.metrics import FeatureExtractor, batches, compute_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--inception", type=int, default=200, help="images for the Inception speed (0: skip)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    path = evaluator_path(cfg)
    if path.is_file():
        net, _, sha = load_evaluator(path)
        source = str(path)
    else:
        e = cfg.evaluator
        net, sha, source = FMNISTClassifier(width=e.width, feature_dim=e.feature_dim).eval(), "random", "random weights"
    ext = FeatureExtractor("fmnist-evaluator", sha, lambda x: net(x))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 1, 32, 32, generator=g) * 2 - 1
    ext(batches(images[:500], args.batch_size))  # warm-up
    start = time.perf_counter()
    gen = ext(batches(images, args.batch_size))
    extract = time.perf_counter() - start
    ref = ext(batches(images.flip(0), args.batch_size))
    labels = torch.arange(args.n) % 10
    start = time.perf_counter()
    compute_metrics(gen, ref, extractor=ext.name, reference_name="bench", seed=0, labels=labels)
    metric = time.perf_counter() - start
    print(f"evaluator ({source}), {torch.get_num_threads()} threads")
    print(f"feature extraction: {args.n / extract:8.0f} images/s ({extract:.1f} s for {args.n})")
    print(f"metrics on {args.n} vs {args.n} features (FID, KID, P/R, IS, class consistency): {metric:.1f} s")
    print(f"full evaluation of {args.n} generated images (cached reference): {extract + metric:.1f} s")
    weights = Path(cfg.evaluator.inception_weights or default_weights_path())
    if args.inception > 0 and weights.is_file():
        inc = InceptionFeatures(weights)
        inc(images[:4])  # warm-up
        start = time.perf_counter()
        for x in batches(images[: args.inception], 50):
            inc(x)
        took = time.perf_counter() - start
        print(f"inception-v3-compat (299 px): {args.inception / took:8.1f} images/s ({took:.1f} s for {args.inception})")
    elif args.inception > 0:
        print(f"inception-v3-compat: no weights at {weights} (run `make inception`)")


if __name__ == "__main__":
    main()
