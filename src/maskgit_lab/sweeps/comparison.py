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
MLflow run; the table goes to results/<experiment>/table1/comparison.{csv,md,json}.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskgit_lab.checkpoints import load_checkpoint, load_model
from maskgit_lab.decoding.ar_sampler import ARDecodeConfig, ar_decode, ar_nll
from maskgit_lab.decoding.generate import for_sampling, generate_codes, iter_decoded
from maskgit_lab.decoding.sampler import NUMERICS_REVISION, DecodeConfig
from maskgit_lab.decoding.schedules import canonical_name
from maskgit_lab.decoding.speed import ar_seconds, maskgit_seconds
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluator import classification_accuracy_score
from maskgit_lab.hardware import inference_dtype, machine_name
from maskgit_lab.identity import model_file
from maskgit_lab.io import atomic_write_text, content_key, file_sha256
from maskgit_lab.lit.stages import train_transformer
from maskgit_lab.stats import interval
from maskgit_lab.sweeps.common import (
    TIMING_NOTE,
    Sweep,
    decode_params,
    ensure_models,
    sweep_main,
)
from maskgit_lab.sweeps.paper import PAPER_TABLE1
from maskgit_lab.sweeps.tables import pm, write_table

ROWS = ("maskgit-best", "maskgit-T8", "ar-recompute", "ar-kv-cache")
SELECTION_SEED = 2000  # chooses the AR temperature; never a reported seed


@dataclass(frozen=True)
class Row:
    key: str
    method: str  # "maskgit" | "ar"
    decode: DecodeConfig | ARDecodeConfig
    model: str = "*"  # which loaded MaskGIT model samples the row ("best": the one trained with its schedule)

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
    schedule, _, steps = text.partition(":")
    if not steps.isdigit():
        raise ConfigError(f"--best {text!r} must look like SCHEDULE:T, e.g. cosine:8")
    return canonical_name(schedule), int(steps)


class Comparison(Sweep):
    kind = "comparison"
    title = ("Regenerate the paper's Table 1 on the configured dataset: MaskGIT against the autoregressive "
             "baseline on the same tokens (quality, CAS, forward passes and speed).")
    table_file = "comparison.md"
    folder = "table1"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ar-checkpoint", help="autoregressive baseline file (default: the config's, "
                                                    "trained first if missing)")
        parser.add_argument("--best", help="MaskGIT's best SCHEDULE:T (default: from the ablation's summary.json)")

    def check(self) -> None:
        if self.cfg.data.name != "fmnist":
            raise ConfigError("the comparison's CAS column trains the Fashion-MNIST evaluator's classifier: "
                              "it needs data.name=fmnist (ImageNet CAS needs an ImageNet classifier)")
        self.best = parse_best(self.args.best) if self.args.best else best_from_summary(
            Path("results") / self.cfg.name / "table3" / "summary.json")
        replace(self.cfg.sampling, schedule=self.best[0], steps=self.best[1]).validated(self.cfg.tokenizer.num_tokens)
        for f in (self.args.checkpoint, self.args.ar_checkpoint):
            if f and not Path(f).is_file():
                raise ConfigError(f"checkpoint {str(f)!r} not found")

    def model_files(self) -> dict[str, Path]:
        """MaskGIT's file (trained first if missing); the AR baseline is trained (if missing)
        and loaded here too, and must come from the same tokenizer."""
        files = super().model_files()
        if self.per_schedule:  # Table 3's best row is its schedule's own model (the paper's design)
            files["best"] = ensure_models(self.cfg, [self.best[0]])[self.best[0]]
        ar_file = self.args.ar_checkpoint
        if ar_file is None:
            train_transformer(self.cfg, kind="ar_transformer")
            ar_file = model_file(self.cfg, "ar_transformer")
        ar, _, ar_meta = load_model(ar_file, "ar_transformer")
        maskgit_meta = load_checkpoint(files["*"], "transformer")["meta"]
        if ar_meta.get("tokenizer_sha") != maskgit_meta.get("tokenizer_sha"):
            raise ConfigError(f"{ar_file} and {files['*']} were trained on different tokenizers: "
                              "the comparison needs both on the same tokens")
        self.ar, self.ar_sha = ar.to(self.device), file_sha256(ar_file)
        self.ar_sampler_dtype = inference_dtype(self.cfg.inference_precision, self.device)[0]
        self.ar_sampler = for_sampling(self.ar, self.ar_sampler_dtype)
        self.ar_temperature, self.ar_scan = self.cfg.sweep.ar_temperature, {}
        return files

    @property
    def per_schedule(self) -> bool:
        """The best row samples the transformer trained with its own schedule (``sweep.mode``
        train, the default, as in the ablation); with decode mode or one ``--checkpoint``,
        every MaskGIT row samples the same model."""
        return (self.cfg.sweep.mode == "train" and not self.args.checkpoint
                and self.best[0] != self.cfg.transformer_train.schedule)

    def prepare(self) -> None:
        if self.cfg.sweep.ar_temperature_scan:
            self.choose_ar_temperature()

    def choose_ar_temperature(self) -> None:
        """The AR temperature with the lowest FID on the selection seed (SELECTION_SEED, never
        one of the reported seeds), over ``sweep.ar_temperature_scan``."""
        m, sw = self.model(), self.cfg.sweep
        key = content_key([self.ar_sha, self.n, list(sw.ar_temperature_scan), sw.ar_top_k, sw.ar_top_p,
                           SELECTION_SEED, self.evaluation.ext.identity, self.evaluation.reference_name,
                           str(self.ar_sampler_dtype), NUMERICS_REVISION])
        # beside the reference features, not in the AR model's folder: that folder is the output of
        # DVC's train_ar stage, and a file added there would make the next `dvc repro` retrain it
        cache = self.cfg.run_dir / "selection" / f"ar-temperature-scan-{key}.json"
        try:  # a finished scan is reused; an unreadable one is measured again
            self.ar_scan = {str(k): float(v) for k, v in json.loads(cache.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self.ar_scan = {}
        if set(self.ar_scan) != {f"{t:g}" for t in sw.ar_temperature_scan}:
            self.ar_scan = self._scan_ar_temperatures(m, sw)
            atomic_write_text(cache, json.dumps(self.ar_scan, indent=1))
        self.ar_temperature = float(min(self.ar_scan, key=self.ar_scan.get))
        print(f"AR temperature chosen: {self.ar_temperature:g} (FID on the selection seed: "
              + ", ".join(f"{t}: {v:.2f}" for t, v in self.ar_scan.items()) + ")", flush=True)

    def _scan_ar_temperatures(self, m, sw) -> dict[str, float]:
        scan, labels = {}, torch.arange(self.n) % m.num_classes
        for t in sw.ar_temperature_scan:
            dcfg = ARDecodeConfig(temperature=t, top_k=sw.ar_top_k, top_p=sw.ar_top_p, decoder="kv-cache")
            stream = iter_decoded(lambda y, g, d=dcfg: ar_decode(self.ar_sampler, y, d, g), m.decoder, labels,
                                  SELECTION_SEED, sw.batch_size, torch.device(self.device))
            scan[f"{t:g}"] = float(self.score(stream, labels, seed=SELECTION_SEED)["record"]["fid"])
            print(f"AR temperature {t:g}: {scan[f'{t:g}']:.2f} (selection seed)", flush=True)
        return scan

    @cached_property
    def rows(self) -> dict[str, Row]:
        sw, m = self.cfg.sweep, self.model()
        n_tok = m.transformer.cfg.num_tokens
        ar_cfg = ARDecodeConfig(temperature=self.ar_temperature, top_k=sw.ar_top_k, top_p=sw.ar_top_p)
        rows = {
            "maskgit-best": Row("maskgit-best", "maskgit", replace(self.cfg.sampling, schedule=self.best[0],
                                                                   steps=self.best[1]), model="best"),
            "maskgit-T8": Row("maskgit-T8", "maskgit", replace(self.cfg.sampling, steps=min(8, n_tok))),
            "ar-recompute": Row("ar-recompute", "ar", replace(ar_cfg, decoder="recompute")),
            "ar-kv-cache": Row("ar-kv-cache", "ar", replace(ar_cfg, decoder="kv-cache")),
        }
        for r in rows.values():
            r.decode.validated(n_tok if r.method == "maskgit" else self.ar.cfg.codebook_size)
        return rows

    def identity(self) -> dict:
        m = self.model()
        return {"models": {"maskgit": m.sha, "ar": self.ar_sha, "tokenizer": m.meta["tokenizer_sha"],
                           **({"maskgit-best": self.model("best").sha} if "best" in self.models else {})},
                "best": list(self.best), "device": self.device, "ar_temperature": self.ar_temperature}

    def describe(self) -> dict:
        return {"best": list(self.best), "best_model": ("trained with its schedule" if "best" in self.models
                                                        else "the config's"),
                "device": self.device, "num_tokens": self.ar.cfg.num_tokens,
                "large_batch": self.cfg.sweep.batch_size, "machine": machine_name(self.device),
                "ar_temperature": self.ar_temperature, "ar_temperature_scan": self.ar_scan}

    def banner(self) -> str:
        return (f"comparison {self.sid}: {len(ROWS)} rows, N={self.n}, {self.evaluation.ext.name}; MaskGIT best "
                f"{self.best[0]} T={self.best[1]} (from the ablation)")

    def space(self) -> dict[str, list]:
        return {"row": list(ROWS), "seed": list(self.cfg.sweep.seeds)}

    def cell_name(self, params: dict) -> str:
        return f"{self.rows[params['row']].label} seed={params['seed']}"

    def codes_fn(self, row: Row):
        if row.method == "maskgit":
            model = self.model(row.model).sampler
            return lambda y, g: generate_codes(model, y, row.decode, g).tokens
        return lambda y, g: ar_decode(self.ar_sampler, y, row.decode, g)

    def forward_passes(self, row: Row) -> int:
        if row.method == "ar":
            return self.ar.cfg.num_tokens
        return row.decode.steps * (2 if row.decode.guidance_weight > 0 else 1)

    def timings(self, row: Row) -> dict:
        """Seconds per image at batch 1 and images per second at the sweep's batch size."""
        big = self.cfg.sweep.batch_size
        if row.method == "maskgit":
            model = self.model(row.model).sampler
            one = maskgit_seconds(model, 1, row.decode, self.device, repeats=5)
            many = maskgit_seconds(model, big, row.decode, self.device, repeats=1)
        else:
            one = ar_seconds(self.ar_sampler, 1, row.decode.decoder, self.device, repeats=5)
            many = ar_seconds(self.ar_sampler, big, row.decode.decoder, self.device, repeats=1)
        return {"seconds_per_image_batch1": one, "images_per_second_large_batch": big / many, "large_batch": big}

    def row_nll(self, row: Row) -> float:
        if row.method == "ar":
            return ar_nll(self.ar, *self.held_out())["nll"]
        m = self.model(row.model)
        return self.nll(m.cfg.transformer_train.schedule, key=row.model)["nll"]

    def cell_params(self, params: dict) -> dict:
        row = self.rows[params["row"]]
        out = {"row": row.key, "method": row.method, "label": row.label, "device": self.device,
               **self.provenance(seed=params["seed"])}
        if row.method == "maskgit":
            m = self.model(row.model)
            axes = {"schedule": row.decode.schedule, "steps": row.decode.steps}
            out.update(decode_params(row.decode, axes), **axes,
                       train_schedule=m.cfg.transformer_train.schedule, checkpoint_sha=m.sha)
        else:
            out.update({f"ar.{k}": v for k, v in row.decode.__dict__.items()}, steps=self.ar.cfg.num_tokens,
                       checkpoint_sha=self.ar_sha)
        return out

    def run_cell(self, params: dict, run_id: str) -> dict:
        """Sample, score, CAS, time."""
        row, cfg, n, seed = self.rows[params["row"]], self.cfg, self.n, params["seed"]
        m = self.model(row.model)
        labels = torch.arange(n) % m.num_classes
        stream = iter_decoded(self.codes_fn(row), m.decoder, labels, seed, cfg.sweep.batch_size,
                              torch.device(self.device))
        out = self.score(stream, labels, keep=n, desc=f"{row.key} samples", seed=seed)
        record = out["record"]
        cas = classification_accuracy_score(out["images"], labels, self.evaluation.test, cfg.evaluator,
                                            cfg.evaluator.cas_steps, seed=seed)
        record.update(cas_top1=100 * cas["cas_top1"], cas_top5=100 * cas["cas_top5"])
        if seed == cfg.sweep.seeds[0]:  # speed does not depend on the sample set: timed once per row
            record.update(self.timings(row))
        model = self.ar if row.method == "ar" else m.transformer
        record.update(parameters=model.num_parameters(), forward_passes=self.forward_passes(row),
                      nll=self.row_nll(row))
        self.log_grid(run_id, out["images"][: self.grid_keep()], row.label)
        return record

    def cell_line(self, params: dict, rec: dict) -> str:
        line = (f"{self.rows[params['row']].label:34s} seed {params['seed']}  FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  "
                f"P {rec['precision']:.3f}  R {rec['recall']:.3f}  CAS {rec['cas_top1']:.1f}/{rec['cas_top5']:.1f}  "
                f"{rec['forward_passes']} passes")
        if "seconds_per_image_batch1" in rec:
            line += (f"  {rec['seconds_per_image_batch1'] * 1000:.1f} ms/img (batch 1)  "
                     f"{rec['images_per_second_large_batch']:.0f} img/s (batch {self.cfg.sweep.batch_size})")
        return line

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        return write_comparison(df, out_dir, info)


def row_stats(df: pd.DataFrame) -> dict[str, dict]:
    """Per row: its label and method, mean / 95% half-width of each metric over the seeds, and
    the timings (measured once per row)."""
    out = {}
    for key, g in df.groupby("row", sort=False):
        r = {"label": g["label"].iloc[0], "method": g["method"].iloc[0], "seeds": len(g)}
        for m in ("fid", "is", "precision", "recall", "cas_top1", "cas_top5", "nll", "kid", "class_consistency",
                  "forward_passes", "parameters"):
            if m in g:
                r[m], r[f"{m}_ci"], r[f"{m}_sd"], _ = interval(g[m].astype(float).tolist())
        for m in ("seconds_per_image_batch1", "images_per_second_large_batch"):
            vals = g[m].dropna() if m in g else []
            r[m] = float(vals.iloc[0]) if len(vals) else float("nan")
        out[key] = r
    return out


def comparison_table(stats: dict[str, dict]) -> pd.DataFrame:
    """Table 1's shape: our rows (in ROWS order, mean ± 95% interval over seeds) beside the
    paper's numbers for the same method."""
    rows = []
    for key in ROWS:
        if key not in stats:
            continue
        r = stats[key]
        paper = PAPER_TABLE1[r["method"]]
        rows.append({
            "Method": r["label"], "Steps": int(r["forward_passes"]), "FID↓": pm(r["fid"], r["fid_ci"]),
            "IS↑": pm(r["is"], r["is_ci"]), "Prec↑": pm(r["precision"], r["precision_ci"], 3),
            "Rec↑": pm(r["recall"], r["recall_ci"], 3), "CAS top-1": pm(r["cas_top1"], r["cas_top1_ci"], 1),
            "CAS top-5": pm(r["cas_top5"], r["cas_top5_ci"], 1), "Params (M)": round(r["parameters"] / 1e6, 2),
            "ms/img (batch 1)": round(1000 * r["seconds_per_image_batch1"], 2),
            "img/s (large batch)": round(r["images_per_second_large_batch"], 1), "NLL": r.get("nll"),
            "paper FID": paper["fid"], "paper IS": paper["is"], "paper Prec": paper["precision"],
            "paper Rec": paper["recall"], "paper steps": paper["steps"],
            "paper CAS": f"{paper['cas_top1']:.2f}/{paper['cas_top5']:.2f}",
        })
    return pd.DataFrame(rows, dtype=object)


def speedups(stats: dict[str, dict]) -> dict:
    """Speed-up of each MaskGIT row over each AR decoder, at batch 1 and at the large batch."""
    out = {}
    for m in ("maskgit-best", "maskgit-T8"):
        for a in ("ar-recompute", "ar-kv-cache"):
            if m in stats and a in stats:
                mr, ar = stats[m], stats[a]
                out[f"{m}/{a}"] = {
                    "batch1": ar["seconds_per_image_batch1"] / mr["seconds_per_image_batch1"],
                    "large_batch": mr["images_per_second_large_batch"] / ar["images_per_second_large_batch"],
                }
    return out


def write_comparison(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
    """comparison.{csv,md,json}: Table 1's shape plus the speed-up ratios."""
    out_dir = Path(out_dir)
    stats = row_stats(df)
    table = comparison_table(stats)
    ratios = speedups(stats)
    caption = (
        f"Comparison (Table 1 shape) on {info['experiment']}: N = {info['n']} class-balanced samples per row and "
        f"seed vs the first {info['n']} test images, extractor {info['extractor']}; quality columns: mean ± 95% "
        f"t-interval half-width over seeds {info.get('seeds')}. "
        + ("Each MaskGIT row samples the transformer trained with its own schedule (the ablation's design). "
           if info.get("best_model") == "trained with its schedule" else
           "Both MaskGIT rows sample the same transformer. ")
        + "Steps = forward "
        f"passes per image. CAS = top-1/top-5 accuracy (%) on the real test set of a classifier trained on the "
        f"samples. Timings: transformer only (tokenizer decoder excluded) on {info.get('machine', '?')} "
        f"({info.get('device', '?')}), large batch = {info.get('large_batch', '?')}; the runs' "
        f"seconds_per_image metric is the sweeps' common timing ({TIMING_NOTE}). NLL: MaskGIT rows give the "
        "masked-token NLL under the training schedule, AR rows the exact raster-order NLL, in nats per token "
        "(different quantities). Columns 'paper …' are the paper's ImageNet 256 numbers (VQGAN* for the AR rows), "
        "for reference only. " + (
            f"Tuning budgets match: MaskGIT's choice temperature came from a {len(info['ar_temperature_scan'])}-value "
            f"scan, and the AR temperature {info['ar_temperature']:g} was chosen from "
            f"{len(info['ar_temperature_scan'])} values by FID on a selection seed that is not reported "
            f"({', '.join(f'{k}: {v:.1f}' for k, v in info['ar_temperature_scan'].items())})."
            if info.get("ar_temperature_scan") else f"AR temperature {info.get('ar_temperature', 1.0):g}, untuned."))
    lines = [f"- {k.replace('/', ' over ')}: ×{v['batch1']:.1f} at batch 1, ×{v['large_batch']:.1f} at the large batch"
             for k, v in ratios.items()]
    text = write_table(table, out_dir, "comparison", caption,
                       extra_md="\nSpeed-up (wall clock):\n\n" + "\n".join(lines) + "\n")
    records = {k: {c: (None if isinstance(v, float) and np.isnan(v) else v) for c, v in r.items()}
               for k, r in stats.items()}
    atomic_write_text(out_dir / "comparison.json",
                      json.dumps({**info, "rows": records, "speedups": ratios}, indent=2, default=str) + "\n")
    return text


main = sweep_main(Comparison)
