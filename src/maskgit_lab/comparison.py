"""The comparison table (the paper's Table 1) on our data: MaskGIT against the
autoregressive baseline trained on the same tokens with the same transformer.

Rows: MaskGIT at the ablation's best schedule and T, MaskGIT at T = 8 (the paper's setting,
with the config's schedule), and the autoregressive baseline with both decoders (whole
prefix recomputed per token, and KV cache). Every row: N class-balanced samples from one
seed scored against the first N test images (FID, IS, precision, recall, KID, class
consistency), the classification accuracy score (CAS, a classifier trained on the samples,
tested on real data), parameters, forward passes per image, seconds per image at batch 1
and images per second at a large batch (transformer only, the tokenizer's decoder
excluded), and the held-out NLL. Rows are cells of a resumable Optuna grid, each a nested
MLflow run; the table goes to results/<experiment>/comparison.{csv,md,json}.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from maskgit_lab.ablation import (
    LOGGED,
    SweepLog,
    add_sweep_arguments,
    decode_params,
    ensure_models,
    sweep_id,
)
from maskgit_lab.ar_sampler import ARDecodeConfig, ar_decode, ar_nll
from maskgit_lab.config import ExperimentConfig
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import file_sha256, git_commit
from maskgit_lab.sampler import DecodeConfig

# The paper's Table 1 (ImageNet 256): MaskGIT and the same-architecture autoregressive
# baseline (VQGAN*). CAS is top-1 / top-5 x 100; "steps" are forward passes per image.
PAPER_TABLE1 = {
    "maskgit": {"fid": 6.18, "is": 182.1, "precision": 0.80, "recall": 0.51, "steps": 8,
                "cas_top1": 63.14, "cas_top5": 84.45},
    "ar": {"fid": 18.65, "is": 80.4, "precision": 0.78, "recall": 0.26, "steps": 256,
           "cas_top1": 53.10, "cas_top5": 76.18},
}
ROWS = ("maskgit-best", "maskgit-T8", "ar-recompute", "ar-kv-cache")


@dataclass(frozen=True)
class Row:
    key: str
    method: str  # "maskgit" | "ar"
    decode: DecodeConfig | ARDecodeConfig

    @property
    def label(self) -> str:
        if isinstance(self.decode, DecodeConfig):
            return f"MaskGIT ({self.decode.schedule}, T={self.decode.steps})"
        return f"AR baseline ({self.decode.decoder})"


def best_from_summary(path: Path) -> tuple[str, int]:
    """(schedule, T) of the ablation's best row, from its summary.json."""
    if not path.is_file():
        raise ConfigError(
            f"no schedule ablation summary at {path}: run `python sweeps/schedule_ablation.py` first, "
            "or pass --best SCHEDULE:T")
    summary = json.loads(path.read_text())
    return summary["best_schedule"], int(summary["best_steps"])


def parse_best(text: str) -> tuple[str, int]:
    from maskgit_lab.schedules import canonical_name

    schedule, _, steps = text.partition(":")
    if not steps.isdigit():
        raise ConfigError(f"--best {text!r} must look like SCHEDULE:T, e.g. cosine:8")
    return canonical_name(schedule), int(steps)


class ComparisonRunner:
    """Both models, the evaluation reference and the held-out tokens, loaded once."""

    def __init__(self, cfg: ExperimentConfig, best: tuple[str, int], device: str, checkpoint: str | None = None,
                 ar_checkpoint: str | None = None) -> None:
        from maskgit_lab.checkpoints import load_ar_transformer, tokenizer_identity
        from maskgit_lab.evaluate import Evaluation, held_out_codes
        from maskgit_lab.sample import load_models
        from maskgit_lab.train import run_paths, train_transformer

        self.cfg, self.device, self.n = cfg, device, cfg.sweep.n
        if cfg.data.name != "fmnist":
            raise ConfigError("the comparison's CAS column trains the Fashion-MNIST evaluator's classifier: "
                              "it needs data.name=fmnist (ImageNet CAS needs an ImageNet classifier)")
        if checkpoint is None:
            checkpoint = ensure_models(cfg, [cfg.transformer_train.schedule])[cfg.transformer_train.schedule]
        if ar_checkpoint is None:
            train_transformer(cfg, kind="ar_transformer")
            ar_checkpoint = run_paths(cfg).ar_file
        for f in (checkpoint, ar_checkpoint):
            if not Path(f).is_file():
                raise ConfigError(f"checkpoint {str(f)!r} not found")
        self.maskgit, self.tokenizer, self.mcfg, self.meta = load_models(checkpoint, device=device)
        ar, _, ar_meta = load_ar_transformer(ar_checkpoint)
        if ar_meta.get("tokenizer_sha") != self.meta["tokenizer_sha"]:
            raise ConfigError(f"{ar_checkpoint} and {checkpoint} were trained on different tokenizers: "
                              "the comparison needs both on the same tokens")
        self.ar = ar.to(device)
        self.identity = {"maskgit": file_sha256(checkpoint), "ar": file_sha256(ar_checkpoint),
                         "tokenizer": tokenizer_identity(self.meta["tokenizer_file"])}
        self.evaluation = Evaluation(cfg, self.n, None, device, cfg.sweep.batch_size)
        codes, labels = held_out_codes(cfg, self.tokenizer, self.meta["tokenizer_sha"], limit=cfg.sweep.nll_sequences)
        k = min(cfg.sweep.nll_sequences, codes.shape[0])
        self.held_out = (codes[:k], labels[:k])
        sw = cfg.sweep
        n_tok = self.maskgit.cfg.num_tokens
        ar_cfg = ARDecodeConfig(temperature=sw.ar_temperature, top_k=sw.ar_top_k, top_p=sw.ar_top_p)
        self.rows = {
            "maskgit-best": Row("maskgit-best", "maskgit", replace(cfg.sampling, schedule=best[0], steps=best[1])),
            "maskgit-T8": Row("maskgit-T8", "maskgit", replace(cfg.sampling, steps=min(8, n_tok))),
            "ar-recompute": Row("ar-recompute", "ar", replace(ar_cfg, decoder="recompute")),
            "ar-kv-cache": Row("ar-kv-cache", "ar", replace(ar_cfg, decoder="kv-cache")),
        }
        for r in self.rows.values():
            r.decode.validated(n_tok if r.method == "maskgit" else self.ar.cfg.codebook_size)
        self.git_commit = git_commit() or "unknown"

    def codes_fn(self, row: Row):
        from maskgit_lab.generate import generate_codes

        if row.method == "maskgit":
            return lambda y, g: generate_codes(self.maskgit, y, row.decode, g).tokens
        return lambda y, g: ar_decode(self.ar, y, row.decode, g)

    def forward_passes(self, row: Row) -> int:
        if row.method == "ar":
            return self.ar.cfg.num_tokens
        return row.decode.steps * (2 if row.decode.guidance_weight > 0 else 1)

    def timings(self, row: Row) -> dict:
        """Seconds per image at batch 1 and images per second at the sweep's batch size."""
        from maskgit_lab.speed import ar_seconds, maskgit_seconds

        big = self.cfg.sweep.batch_size
        if row.method == "maskgit":
            one = maskgit_seconds(self.maskgit, 1, row.decode, self.device, repeats=5)
            many = maskgit_seconds(self.maskgit, big, row.decode, self.device, repeats=1)
        else:
            one = ar_seconds(self.ar, 1, row.decode.decoder, self.device, repeats=5)
            many = ar_seconds(self.ar, big, row.decode.decoder, self.device, repeats=1)
        return {"seconds_per_image_batch1": one, "images_per_second_large_batch": big / many, "large_batch": big}

    def nll(self, row: Row) -> float:
        from maskgit_lab.eval.nll import masked_token_nll

        if row.method == "ar":
            return ar_nll(self.ar, *self.held_out)["nll"]
        return masked_token_nll(self.maskgit, *self.held_out, self.mcfg.transformer_train.schedule,
                                draws=self.cfg.evaluator.nll_draws, seed=self.cfg.sweep.seed)["nll"]

    def run_row(self, row: Row, keep: int) -> tuple[dict, torch.Tensor]:
        """Sample, score, CAS, time; -> (record, first ``keep`` images)."""
        from maskgit_lab.eval.evaluator import classification_accuracy_score
        from maskgit_lab.generate import iter_decoded

        cfg, n = self.cfg, self.n
        labels = torch.arange(n) % self.maskgit.cfg.num_classes
        kept: list[torch.Tensor] = []
        t0 = time.perf_counter()
        stream = iter_decoded(self.codes_fn(row), self.tokenizer, labels, cfg.sweep.seed, cfg.sweep.batch_size,
                              torch.device(self.device))
        feats = self.evaluation.ext((kept.append(x) or x for x in stream), total=n, desc=f"{row.key} samples")
        sample_seconds = time.perf_counter() - t0
        images = torch.cat(kept)
        result = self.evaluation.score(feats, cfg.sweep.seed, labels)
        record = {short: result["metrics"].get(key) for short, key in LOGGED.items()}
        cas = classification_accuracy_score(images, labels, self.evaluation.test, cfg.evaluator,
                                            cfg.evaluator.cas_steps, seed=cfg.sweep.seed)
        record.update(cas_top1=100 * cas["cas_top1"], cas_top5=100 * cas["cas_top5"])
        record.update(self.timings(row))
        model = self.ar if row.method == "ar" else self.maskgit
        record.update(parameters=model.num_parameters(), forward_passes=self.forward_passes(row),
                      nll=self.nll(row), sampling_seconds=sample_seconds, n=n)
        return record, images[:keep]

    def run_params(self, row: Row) -> dict:
        params = {"row": row.key, "method": row.method, "label": row.label, "n": self.n, "seed": self.cfg.sweep.seed,
                  "extractor": self.evaluation.ext.name, "extractor_identity": self.evaluation.ext.identity,
                  "reference": self.evaluation.reference_name, "device": self.device,
                  "checkpoint_sha": self.identity[row.method], "tokenizer_sha": self.meta["tokenizer_sha"],
                  "git_commit": self.git_commit}
        if row.method == "maskgit":
            params.update(decode_params(row.decode), schedule=row.decode.schedule, steps=row.decode.steps)
        else:
            params.update({f"ar.{k}": v for k, v in row.decode.__dict__.items()}, steps=self.ar.cfg.num_tokens)
        return params


def main(argv: list[str] | None = None) -> int:
    """``python sweeps/comparison.py``: see the module docstring."""
    import argparse

    from maskgit_lab import study as S
    from maskgit_lab.config import load_config
    from maskgit_lab.errors import cli_errors

    @cli_errors
    def run() -> int:
        parser = argparse.ArgumentParser(prog="python sweeps/comparison.py", description=__doc__.splitlines()[0])
        add_sweep_arguments(parser)
        parser.add_argument("--ar-checkpoint", help="autoregressive baseline file (default: the config's, "
                                                    "trained first if missing)")
        parser.add_argument("--best", help="MaskGIT's best SCHEDULE:T (default: from the ablation's summary.json)")
        args = parser.parse_intermixed_args(argv)
        cfg = load_config(args.config, args.overrides)
        out_dir = Path(args.out_dir or f"results/{cfg.name}")
        best = parse_best(args.best) if args.best else best_from_summary(out_dir / "summary.json")
        storage = S.open_storage(args.storage, cfg.runs_dir)
        torch.set_float32_matmul_precision("high")
        wall = time.time()
        runner = ComparisonRunner(cfg, best, args.device, args.checkpoint, args.ar_checkpoint)
        sid = sweep_id(cfg, "comparison", {"models": runner.identity, "best": list(best), "device": args.device})
        info = {"experiment": cfg.name, "n": runner.n, "seed": cfg.sweep.seed, "extractor": runner.evaluation.ext.name,
                "sweep_id": sid, "best": list(best), "device": args.device, "num_tokens": runner.ar.cfg.num_tokens,
                "large_batch": cfg.sweep.batch_size, "machine": machine_name(args.device)}
        mlog = SweepLog(cfg, sid, "comparison", "comparison", info)
        space = {"row": list(ROWS)}
        st = S.grid_study(sid, storage, space)
        print(f"comparison {sid}: {len(ROWS)} rows, N={runner.n}, {info['extractor']}; MaskGIT best "
              f"{best[0]} T={best[1]} (from the ablation); Optuna study in {S.storage_url(args.storage, cfg.runs_dir)}")

        def run_cell(trial, params) -> float:
            row = runner.rows[params["row"]]
            classes = runner.maskgit.cfg.num_classes

            def work(run_id: str) -> dict:
                rec, images = runner.run_row(row, cfg.sweep.grid_per_class * classes)
                mlog.grid_artifact(run_id, images, row.label, classes)
                return rec

            rec = mlog.cell(S.cell_key(params, list(space)), row.label, runner.run_params(row), work)
            for k, v in rec.items():
                trial.set_user_attr(k, v)
            print(f"{row.label:34s} FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  P {rec['precision']:.3f}  "
                  f"R {rec['recall']:.3f}  CAS {rec['cas_top1']:.1f}/{rec['cas_top5']:.1f}  "
                  f"{rec['forward_passes']} passes  {rec['seconds_per_image_batch1'] * 1000:.1f} ms/img (batch 1)  "
                  f"{rec['images_per_second_large_batch']:.0f} img/s (batch {cfg.sweep.batch_size})", flush=True)
            return rec["fid"]

        S.run_grid(st, space, run_cell)
        from maskgit_lab.tables import markdown, sweep_runs, write_comparison

        df = sweep_runs(cfg.tracking_uri, cfg.name, sid)
        table = write_comparison(df, out_dir, info)
        print(markdown(table, ""))
        print(f"wall time {time.time() - wall:.0f} s; results in {out_dir}/comparison.md")
        return 0

    return run()


def machine_name(device: str) -> str:
    """A short description of the machine the timings come from."""
    import os
    import platform

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"
