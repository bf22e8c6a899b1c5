"""This checkout against an earlier commit, measured in one run: each version's own defaults
(precision, attention, sampler) on the default geometry, rounds interleaved, medians.

    python benchmarks/side_by_side.py [--base e4ab615] [--rounds 3] [--config experiments/fmnist.yaml]

The earlier commit is checked out with ``git worktree`` into a temporary folder (removed at
the end); every measurement runs in a fresh interpreter with that version's ``src`` first on
``PYTHONPATH``. Measured, random weights at the config's geometry: one ablation cell end to
end (N class-balanced images at T steps: sampling, tokenizer decoding, evaluator features
and every metric), a transformer training step and a tokenizer training step, each at the
precision that version's defaults choose on this machine. Set ONEDNN_MAX_CPU_ISA (e.g.
AVX512_CORE_VNNI) and MASKGIT_CPU_FLAGS to measure as on a CPU without bf16 hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(config: str, n: int, steps: int, repeats: int) -> dict:
    """Run inside one version's interpreter: its defaults, its code paths."""
    import torch

    try:  # this layout
        from maskgit_lab.config import load_config, with_data_sizes
        from maskgit_lab.decoding.generate import iter_images
        from maskgit_lab.hardware import inference_dtype, resolve_precision, training_device
        from maskgit_lab.models.registry import build_transformer
        new = True
    except ImportError:  # the layout before it
        from maskgit_lab.generate import iter_images

        from maskgit_lab.config import load_config
        from maskgit_lab.models.transformer import build_transformer
        from maskgit_lab.train import fill_transformer_config as with_data_sizes
        new = False
    from maskgit_lab.eval.evaluator import FMNISTClassifier
    from maskgit_lab.eval.metrics import FeatureExtractor, Features, compute_metrics
    from maskgit_lab.lit.mvtm import MVTMModule
    from maskgit_lab.models.vqgan import VQGAN

    cfg = load_config(config)
    tc = cfg.tokenizer
    cfg = with_data_sizes(cfg, tc.codebook_size, tc.num_tokens, 10)

    def precision(stage: str) -> str:
        if new:
            return resolve_precision(stage or cfg.precision, training_device(cfg.accelerator))[0]
        return stage or cfg.precision

    sample_dtype = inference_dtype(cfg.inference_precision, "cpu")[0] if new else None

    def autocast(dtype):
        return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)

    def timed(fn, reps: int) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    torch.manual_seed(0)
    transformer = build_transformer(cfg.transformer).eval()
    tok = VQGAN(tc).eval()
    evaluator = FMNISTClassifier(width=cfg.evaluator.width, feature_dim=cfg.evaluator.feature_dim).eval()
    if new:  # the extractor as the sweeps build it
        from maskgit_lab.eval.metrics import classifier_extractor

        ext = classifier_extractor(evaluator, "random")
    else:
        ext = FeatureExtractor("evaluator", "random", lambda x: evaluator(x))
    ref = Features(torch.randn(n, cfg.evaluator.feature_dim, dtype=torch.float64),
                   torch.randn(n, 10, dtype=torch.float64))
    dcfg = cfg.sampling.validated(cfg.transformer.num_tokens)
    from dataclasses import replace

    dcfg = replace(dcfg, steps=steps)
    labels = torch.arange(n) % 10

    if new:  # weights cast once for sampling, as the sweeps do
        from maskgit_lab.decoding.generate import for_sampling

        sampler, decoder = for_sampling(transformer, sample_dtype), for_sampling(tok, sample_dtype)
    else:
        sampler, decoder = transformer, tok

    def cell():
        feats = ext(iter_images(sampler, decoder, labels, dcfg, 0, cfg.sweep.batch_size))
        compute_metrics(feats, ref, extractor="evaluator", reference_name="random", seed=0, labels=labels)

    module = MVTMModule(cfg).train()
    module.log_dict = lambda *a, **k: None
    opt = module.configure_optimizers()["optimizer"]
    bm = cfg.transformer_train.batch_size
    batch = (torch.randint(0, tc.codebook_size, (bm, tc.num_tokens)), torch.arange(bm) % 10)
    tr_dtype = torch.bfloat16 if precision(cfg.transformer_train.precision).startswith("bf16") else None

    def tr_step():
        with autocast(tr_dtype):
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tok_train = VQGAN(tc).train()
    # each version's own optimizer settings and compile switch
    topt = torch.optim.Adam(tok_train.parameters(), **({"fused": True} if new else {}))
    tok_fn = torch.compile(tok_train) if new and getattr(cfg.tokenizer_train, "compile", False) else tok_train
    x = torch.rand(cfg.tokenizer_train.batch_size, tc.in_channels, tc.resolution, tc.resolution) * 2 - 1
    tok_dtype = torch.bfloat16 if precision(cfg.tokenizer_train.precision).startswith("bf16") else None

    def tok_step():
        with autocast(tok_dtype):
            rec, q = tok_fn(x)
            loss = (rec.float() - x).abs().mean() + q.loss
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    name = {None: "fp32", torch.bfloat16: "bf16"}
    return {"cell": timed(cell, max(1, repeats // 2)), "transformer_step": timed(tr_step, repeats),
            "tokenizer_step": timed(tok_step, repeats),
            "precisions": f"sampling {name[sample_dtype]}, transformer {name[tr_dtype]}, tokenizer {name[tok_dtype]}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="e4ab615", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of a step inside a round")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.config, args.n, args.steps, args.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        r = subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode:
            print(f"error: cannot check out {args.base}: {r.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 2
        try:
            versions = {f"base {args.base}": base, "this checkout": ROOT}
            results: dict[str, list[dict]] = {k: [] for k in versions}
            for rnd in range(args.rounds):
                for label, tree in versions.items():
                    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
                    out = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--measure", "--config", args.config,
                         "--n", str(args.n), "--steps", str(args.steps), "--repeats", str(args.repeats)],
                        cwd=tree, env=env, capture_output=True, text=True)
                    if out.returncode:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"round {rnd + 1} {label}: {results[label][-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    print(f"\nmedians over {args.rounds} interleaved rounds (seconds)")
    keys = ("cell", "transformer_step", "tokenizer_step")
    med = {label: {k: statistics.median(r[k] for r in rs) for k in keys} for label, rs in results.items()}
    (old, new) = list(med)
    for label in med:
        print(f"  {label:24s} " + "  ".join(f"{k} {med[label][k]:.4f}" for k in keys)
              + f"  ({results[label][0]['precisions']})")
    print("  speed-up                 " + "  ".join(f"{k} x{med[old][k] / med[new][k]:.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
