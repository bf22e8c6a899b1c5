"""Training and sampling throughput of an experiment's models, fp32 against bf16 autocast.

    python benchmarks/train_throughput.py [--config experiments/fmnist.yaml] [--steps 8]

Prints seconds per optimizer step for the tokenizer and the transformer at the
config's batch sizes (random inputs of the right shapes, no data needed) and the
transformer's forward time at sampling batch size. Use it to choose each stage's
``precision`` and step budget for a machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from maskgit_lab.config import load_config
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.models.vqgan import VQGAN
from maskgit_lab.train import fill_transformer_config


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(args.config)
    tc = cfg.tokenizer
    cfg = fill_transformer_config(cfg, tc.codebook_size, tc.num_tokens, args.num_classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")

    tok = VQGAN(tc).to(device)
    opt = torch.optim.Adam(tok.parameters())
    bt = cfg.tokenizer_train.batch_size
    x = torch.rand(bt, tc.in_channels, tc.resolution, tc.resolution, device=device) * 2 - 1

    def tok_step():
        rec, q = tok(x)
        loss = (rec.float() - x).abs().mean() + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    module = MVTMModule(cfg).to(device)
    module.log_dict = lambda *a, **k: None  # no trainer attached in a bare benchmark
    mopt = module.configure_optimizers()["optimizer"]
    bm = cfg.transformer_train.batch_size
    codes = torch.randint(0, tc.codebook_size, (bm, tc.num_tokens), device=device)
    labels = torch.randint(0, args.num_classes, (bm,), device=device)

    def tr_step():
        loss = module.training_step((codes, labels), 0)
        mopt.zero_grad(set_to_none=True)
        loss.backward()
        mopt.step()

    def tr_forward():
        with torch.inference_mode():
            module.model.eval()(codes, labels)

    dev_type = "cuda" if device == "cuda" else "cpu"
    for name, fn, batch in (("tokenizer train step", tok_step, bt), ("transformer train step", tr_step, bm),
                            ("transformer forward (sampling)", tr_forward, bm)):
        for dtype in (None, torch.bfloat16):
            with torch.autocast(dev_type, dtype=dtype or torch.float32, enabled=dtype is not None):
                sec = timed(fn, args.steps)
            label = "bf16-mixed" if dtype else "fp32"
            print(f"{name:32s} {label:10s} batch {batch:4d}: {sec * 1000:8.1f} ms/step, "
                  f"{batch / sec:8.0f} images/s")


if __name__ == "__main__":
    main()
