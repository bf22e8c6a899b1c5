"""Roofline: this machine's matmul and conv rates at the models' own shapes, and each stage's
achieved rate as a fraction of them.

    python benchmarks/roofline.py [--config experiments/fmnist.yaml] [--batch 500] [--n 1000]
        [--steps 8] [--repeats 3] [--device cpu|cuda] [--precision auto|fp32|bf16]

Random weights at the config's geometry (speed does not depend on the weights' values).
Peak rates: GEMMs of the transformer's shapes ([B*(N+1), D] x [D, 3D], [D, mlp], [mlp, D],
the code head) and the tokenizer decoder's convolutions, in fp32 and bf16, FLOP-weighted.
Stages, at the sampling/training precision ``auto`` picks for this machine (and fp32): the
transformer forward used for sampling; the sampler's overhead (a T-step decode over T bare
forwards, aim <= 1.05); the tokenizer's decoder; the evaluator's features; one ablation cell
end to end (N images at T steps: sampling, decoding, features and every metric); a
transformer and a tokenizer training step (forward, backward, optimizer). FLOPs are counted
by torch.utils.flop_counter; a stage's rate is its FLOPs over its median wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from maskgit_lab.cli import add_device_argument
from maskgit_lab.config import load_config, with_data_sizes
from maskgit_lab.decoding.generate import generate_codes, iter_images
from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.decoding.speed import benchmark_num_classes, median_seconds
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.eval.evaluator import FMNISTClassifier
from maskgit_lab.eval.metrics import FeatureExtractor, Features, compute_metrics
from maskgit_lab.hardware import autocast, dtype_name, inference_dtype, machine_name, native_bf16
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.models.registry import build_transformer
from maskgit_lab.models.vqgan import VQGAN

Tensor = torch.Tensor


def flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def gemm_rate(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: str, repeats: int) -> float:
    """FLOP-weighted GFLOP/s of [m, k] x [k, n] products at ``shapes``."""
    total_flops = total_s = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        s = median_seconds(lambda a=a, b=b: a @ b, device, repeats=max(3, repeats), warmup=2)
        total_flops += 2 * m * k * n
        total_s += s
    return total_flops / total_s / 1e9


def conv_rate(layers: list[tuple[int, int, int, int]], batch: int, dtype: torch.dtype, device: str,
              repeats: int) -> float:
    """FLOP-weighted GFLOP/s of 3x3 convolutions (cin, cout, h, w) at ``batch``."""
    total_flops = total_s = 0.0
    for cin, cout, h, w in layers:
        x = torch.randn(batch, cin, h, w, device=device, dtype=dtype)
        wt = torch.randn(cout, cin, 3, 3, device=device, dtype=dtype)
        s = median_seconds(lambda x=x, wt=wt: F.conv2d(x, wt, padding=1), device, repeats=max(3, repeats), warmup=2)
        total_flops += 2 * batch * cout * cin * 9 * h * w
        total_s += s
    return total_flops / total_s / 1e9


def decoder_convs(tok: VQGAN, batch: int, device: str) -> list[tuple[int, int, int, int]]:
    """The 3x3 convolutions the tokenizer's decoder runs: (cin, cout, h, w) of each."""
    found: list[tuple[int, int, int, int]] = []

    def hook(mod, inputs, _out):
        if mod.kernel_size == (3, 3):
            x = inputs[0]
            found.append((x.shape[1], mod.out_channels, x.shape[2], x.shape[3]))

    hooks = [m.register_forward_hook(hook) for m in tok.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    side = tok.cfg.grid_size
    with torch.inference_mode():
        tok.decode(torch.zeros(1, side, side, dtype=torch.long, device=device))
    for h in hooks:
        h.remove()
    return found


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    add_device_argument(parser)
    parser.add_argument("--batch", type=int, default=500, help="sampling batch")
    parser.add_argument("--n", type=int, default=1000, help="images in the end-to-end ablation cell")
    parser.add_argument("--steps", type=int, default=8, help="decoding steps T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="the stages' precision besides fp32 (auto: bf16 where the hardware runs it)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if min(args.batch, args.n, args.steps, args.repeats) < 1:
        raise ConfigError("--batch, --n, --steps and --repeats must be at least 1")
    cfg = load_config(args.config, args.overrides)
    tc = cfg.tokenizer
    cfg = with_data_sizes(cfg, tc.codebook_size, tc.num_tokens, benchmark_num_classes(cfg))
    dev = args.device
    torch.manual_seed(0)
    chosen, why = inference_dtype(args.precision, dev)
    native, native_why = native_bf16(dev)
    print(f"machine: {machine_name(dev)}; torch {torch.__version__}; bf16 native: {native} ({native_why})")
    print(f"geometry: {cfg.name}; stage precision {dtype_name(chosen)} ({why}); sampling batch {args.batch}")
    dtypes = [None] + ([chosen] if chosen is not None else [])

    transformer = build_transformer(cfg.transformer).to(dev).eval()
    tok = VQGAN(tc).to(dev).eval()
    evaluator = FMNISTClassifier(width=cfg.evaluator.width, feature_dim=cfg.evaluator.feature_dim).to(dev).eval()
    t = transformer.cfg
    m = args.batch * (t.num_tokens + 1)
    shapes = [(m, t.dim, 3 * t.dim), (m, t.dim, t.dim), (m, t.dim, t.mlp_dim), (m, t.mlp_dim, t.dim),
              (args.batch * t.num_tokens, t.dim, t.codebook_size)]
    convs = decoder_convs(tok, args.batch, dev)
    peak = {}
    print("\npeak rates at the models' shapes (GFLOP/s)")
    for dt in (torch.float32, torch.bfloat16):
        peak[dt] = (gemm_rate(shapes, dt, dev, args.repeats), conv_rate(convs, 100, dt, dev, args.repeats))
        print(f"  {dtype_name(dt):5s} matmul {peak[dt][0]:8.1f}   conv {peak[dt][1]:8.1f}", flush=True)

    labels = torch.arange(args.batch, device=dev) % t.num_classes
    masked = torch.full((args.batch, t.num_tokens), t.mask_id, device=dev)
    side = tok.cfg.grid_size
    codes = torch.randint(0, t.codebook_size, (args.batch, side, side), device=dev)
    dcfg = DecodeConfig(steps=args.steps).validated(t.num_tokens)
    images = torch.rand(args.batch, tc.in_channels, tc.resolution, tc.resolution, device=dev) * 2 - 1

    rows: list[tuple[str, str, float, float | None, float | None]] = []  # name, dtype, seconds, GFLOP/s, fraction

    def stage(name: str, fn: Callable[[], object], dt: torch.dtype | None, kind: str, count: bool = True,
              grad: bool = False) -> float:
        ctx = (lambda: autocast(dev, dt)) if grad else (lambda: _inference(dev, dt))

        def run():
            with ctx():
                fn()

        s = median_seconds(run, dev, repeats=args.repeats, warmup=1)
        f = flops(run) if count else None
        rate = f / s / 1e9 if f else None
        ref = peak[dt or torch.float32][0 if kind == "matmul" else 1]
        rows.append((name, dtype_name(dt), s, rate, rate / ref if rate else None))
        return s

    for dt in dtypes:
        fwd = stage("transformer forward (sampling)", lambda: transformer(masked, labels), dt, "matmul")
        gen = torch.Generator(device=dev)
        dec = stage(f"MaskGIT decode, T={args.steps}", lambda gen=gen: _decode(transformer, labels, dcfg, gen), dt,
                    "matmul")
        rows.append((f"  sampler overhead (decode / {args.steps} forwards)", dtype_name(dt),
                     dec / (args.steps * fwd), None, None))
        stage("tokenizer decode", lambda: tok.decode(codes), dt, "conv")
    stage("evaluator features", lambda: evaluator(images), None, "conv")

    ref = Features(torch.randn(args.n, cfg.evaluator.feature_dim, dtype=torch.float64),
                   torch.randn(args.n, 10, dtype=torch.float64))
    ext = FeatureExtractor("evaluator", "random", lambda x: evaluator(x.to(dev)))
    for dt in dtypes:
        def cell(dt=dt):
            lab = torch.arange(args.n) % t.num_classes
            feats = ext(iter_images(transformer, tok, lab, dcfg, 0, args.batch, dt))
            compute_metrics(feats, ref, extractor="evaluator", reference_name="random", seed=0, labels=lab)

        s = median_seconds(cell, dev, repeats=max(1, args.repeats // 2), warmup=0)
        rows.append((f"ablation cell end to end (N={args.n}, T={args.steps})", dtype_name(dt), s, None, None))

    module = MVTMModule(cfg).to(dev).train()
    module.log_dict = lambda *a, **k: None  # no trainer attached in a bare benchmark
    opt = module.configure_optimizers()["optimizer"]
    bm = cfg.transformer_train.batch_size
    batch = (torch.randint(0, t.codebook_size, (bm, t.num_tokens), device=dev),
             torch.arange(bm, device=dev) % t.num_classes)

    def tr_step():
        loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tok_train = VQGAN(tc).to(dev).train()
    topt = torch.optim.Adam(tok_train.parameters())
    bt = cfg.tokenizer_train.batch_size
    x = torch.rand(bt, tc.in_channels, tc.resolution, tc.resolution, device=dev) * 2 - 1

    def tok_step():
        rec, q = tok_train(x)
        loss = (rec.float() - x).abs().mean() + q.loss
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    for dt in dtypes:
        stage(f"transformer train step (batch {bm})", tr_step, dt, "matmul", grad=True)
        stage(f"tokenizer train step (batch {bt})", tok_step, dt, "conv", grad=True)

    print(f"\n{'stage':48s} {'dtype':5s} {'seconds':>9s} {'GFLOP/s':>9s} {'of peak':>8s}")
    for name, dt, s, rate, frac in rows:
        r = f"{rate:9.1f}" if rate else " " * 9
        f = f"{100 * frac:7.0f}%" if frac else " " * 8
        unit = f"{s:9.2f}" if "overhead" in name else f"{s:9.4f}"
        print(f"{name:48s} {dt:5s} {unit} {r} {f}")
    return 0


@contextlib.contextmanager
def _inference(device: str, dtype: torch.dtype | None):
    with torch.inference_mode(), autocast(device, dtype):
        yield


def _decode(transformer, labels: Tensor, dcfg: DecodeConfig, gen: torch.Generator) -> None:
    gen.manual_seed(0)
    generate_codes(transformer, labels, dcfg, gen)


if __name__ == "__main__":
    sys.exit(main())

