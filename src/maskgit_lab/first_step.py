"""Whose first step: a trained transformer decoded with its own schedule twice on the same
seeds, once as it is and once with the first step's predictions (the fully masked grid)
taken from another model, the donor. The change of FID is what the model's own first step
made of it.

    python -m maskgit_lab.first_step runs/fmnist/transformer-square_root=runs/fmnist/transformer-cosine \\
        [MODEL=DONOR ...] [--steps 8] [--seeds 0 1 2] [--n 2000] [--config experiments/fmnist.yaml] \\
        [--out results/fmnist/first_step.csv] [key=value overrides]

Why the first step: schedules that mask little in training ask the most of it. At T = 8
square root fills 35 % of a blank grid in its first step (logarithmic 47 %, cosine 2 %)
with a model that saw a mask ratio above 0.9 in 1 % of its training batches (logarithmic
3 %, cosine 29 %).

MODEL and DONOR are transformer files or the folders that hold them, trained on the same
tokenizer. Both decodings of a model use the same seeds (labels arange(n) % classes, the
same Gumbel noise, the same reference), so their difference is paired: the report gives
each FID's mean ± 95 % t half-width over seeds, the paired difference with its t-test, and
for models of one schedule with one donor schedule (several trainings) the mean and spread
of both over the trainings. With ``--out`` the rows are written after each decoding; rows
already there (same model and donor contents, T, seed, N, sampling settings) are reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from maskgit_lab.checkpoints import load_model, load_models, transformer_file
from maskgit_lab.config import load_config
from maskgit_lab.decoding.generate import check_guidance, for_sampling, iter_images
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.eval import metrics as M
from maskgit_lab.eval.evaluation import Evaluation
from maskgit_lab.hardware import inference_dtype
from maskgit_lab.io import atomic_write_text, file_sha256, publish_report
from maskgit_lab.sweeps.common import interval, paired_p

METRICS = {"fid": M.FID, "precision": M.PRECISION, "recall": M.RECALL, "class_consistency": M.CLASS_CONSISTENCY}


class FirstStepFrom(nn.Module):
    """A sampler model whose predictions for fully masked grids (the first step from a blank
    grid) come from ``donor``, every other step's from ``model``. Same call as the suite's
    transformers: (codes [B, N], labels, positions=None) -> logits [B, N, K] or [M, K]."""

    def __init__(self, model: nn.Module, donor: nn.Module) -> None:
        super().__init__()
        if model.cfg.num_tokens != donor.cfg.num_tokens or model.cfg.codebook_size != donor.cfg.codebook_size:
            raise ConfigError("the donor's token grid or codebook differs from the model's")
        self.model, self.donor, self.cfg = model, donor, model.cfg

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        blank = (codes == self.cfg.mask_id).all(1)
        if not blank.any():
            return self.model(codes, labels, positions=positions)
        if blank.all():
            return self.donor(codes, labels, positions=positions)
        own, other = self.model(codes, labels, positions=positions), self.donor(codes, labels, positions=positions)
        rows = blank if positions is None else blank[positions.nonzero()[:, 0]]
        return torch.where(rows.view(-1, *([1] * (own.ndim - 1))), other, own)


def parse_pairs(items: list[str]) -> list[tuple[Path, Path]]:
    """MODEL=DONOR arguments -> (model file, donor file), both checked to exist."""
    pairs = []
    for item in items:
        model, sep, donor = item.partition("=")
        if not sep or not model or not donor:
            raise ConfigError(f"{item!r}: want MODEL=DONOR (two transformer files or folders)")
        pairs.append((transformer_file(model), transformer_file(donor)))
    return pairs


def decode_scores(model: nn.Module, tokenizer: nn.Module, dcfg, seed: int, ev: Evaluation, batch: int) -> dict:
    """The metrics of ``ev.n`` class-balanced samples of ``model`` drawn from ``seed``."""
    labels = torch.arange(ev.n) % model.cfg.num_classes
    feats = ev.ext(iter_images(model, tokenizer, labels, dcfg, seed, batch), total=ev.n)
    result = ev.score(feats, seed, labels)["metrics"]
    return {short: result.get(key) for short, key in METRICS.items()}


def run(pairs: list[tuple[Path, Path]], cfg, steps: int, seeds: list[int], n: int, batch: int = 250,
        out: Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """Rows (model, donor, ..., seed, first_step in {own, donor}, metrics) for every pair. A
    decoding is made once: a model's own decodings serve every donor it is paired with, and
    with ``out`` (a csv, written after each decoding) rows already there are reused."""
    ev = Evaluation(cfg, n, None, device, batch)
    dtype, _ = inference_dtype(cfg.inference_precision, device)
    done = pd.read_csv(out, dtype={"key": str}) if out is not None and out.is_file() else pd.DataFrame(columns=["key"])
    known = {r["key"]: r for r in done.to_dict("records")}  # decodings already made, by content key
    rows: list[dict] = []
    total = len(pairs) * len(seeds) * 2
    with tqdm(total=total, desc="first step", unit="decoding", dynamic_ncols=True) as bar:
        for model_path, donor_path in pairs:
            transformer, tok, tcfg, meta = load_models(model_path, device=device)
            donor, dcfg_donor, dmeta = load_model(donor_path, "transformer")
            donor = donor.to(device)
            if dmeta["tokenizer_sha"] != meta["tokenizer_sha"]:
                raise ConfigError(f"{donor_path} was trained on another tokenizer than {model_path}: "
                                  "its codes would mean other images")
            dcfg = replace(cfg.sampling, schedule=tcfg.transformer_train.schedule,
                           steps=steps).validated(transformer.cfg.num_tokens)
            check_guidance(tcfg.transformer_train.class_dropout, dcfg)
            sampler, decoder = for_sampling(transformer, dtype), for_sampling(tok, dtype)
            shas = {"own": file_sha256(model_path), "donor": file_sha256(donor_path)}
            ident = {"model": model_path.parent.name, "schedule": tcfg.transformer_train.schedule,
                     "train_seed": tcfg.transformer_train.seed, "donor": donor_path.parent.name,
                     "donor_schedule": dcfg_donor.transformer_train.schedule, "steps": steps, "n": n}
            settings = json.dumps({**asdict(dcfg), "reference": ev.reference_key, "dtype": str(dtype)}, sort_keys=True, default=str)
            for which in ("own", "donor"):
                model = sampler if which == "own" else FirstStepFrom(sampler, for_sampling(donor, dtype))
                for seed in seeds:
                    key = hashlib.sha256(f"{which} {shas['own']} {shas[which]} {steps} {seed} {n} {settings}".encode()).hexdigest()[:16]
                    fresh = key not in known
                    metrics = decode_scores(model, decoder, dcfg, seed, ev, batch) if fresh else known[key]
                    rows.append({**ident, "first_step": which, "seed": seed, "key": key,
                                 **{m: metrics[m] for m in METRICS}})
                    known[key] = rows[-1]
                    if fresh and out is not None:
                        keep = done[~done["key"].isin([r["key"] for r in rows])]
                        frames = [f for f in (keep, pd.DataFrame(rows)) if len(f)]
                        atomic_write_text(out, pd.concat(frames).to_csv(index=False))
                    bar.update()
    frame = pd.DataFrame(rows)
    for col in METRICS:
        frame[col] = frame[col].astype(float)
    return frame.astype({"seed": int, "steps": int, "n": int, "train_seed": int})


def paired(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model and donor: FID with its own first step and with the donor's (mean ± half over
    seeds), the paired difference donor - own with its half-width and t-test p."""
    out = []
    for (model, donor, steps), g in rows.groupby(["model", "donor", "steps"], sort=False):
        wide = g.pivot_table(index="seed", columns="first_step", values="fid")
        own, other = wide["own"].to_numpy(), wide["donor"].to_numpy()
        d = other - own
        first = g.iloc[0]
        out.append({"model": model, "schedule": first["schedule"], "train_seed": first["train_seed"],
                    "donor": donor, "donor_schedule": first["donor_schedule"], "steps": steps, "seeds": len(d),
                    "own": own.mean(), "own_half": interval(own)[1], "donor_fid": other.mean(),
                    "donor_half": interval(other)[1], "diff": d.mean(), "diff_half": interval(d)[1],
                    "p": paired_p(other, own)})
    return pd.DataFrame(out)


def across_trainings(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (schedule, donor schedule, T) with two or more models (trainings): the mean and SD
    over the models of FID with their own first step and with the donors', and the mean
    difference with a t interval over the models."""
    out = []
    for (schedule, donor_schedule, steps), g in pairs.groupby(["schedule", "donor_schedule", "steps"], sort=False):
        if len(g) < 2:
            continue
        d = (g["donor_fid"] - g["own"]).to_numpy()
        out.append({"schedule": schedule, "donor_schedule": donor_schedule, "steps": steps, "models": len(g),
                    "own_mean": g["own"].mean(), "own_sd": g["own"].std(ddof=1),
                    "donor_mean": g["donor_fid"].mean(), "donor_sd": g["donor_fid"].std(ddof=1),
                    "diff": d.mean(), "diff_half": interval(d)[1], "p": paired_p(d, np.zeros_like(d))})
    return pd.DataFrame(out)


def report(pairs: pd.DataFrame, groups: pd.DataFrame) -> str:
    lines = ["# Whose first step", "",
             "FID of each model decoded with its own schedule, with its own first step and with the donor's "
             "(the predictions for the fully masked grid), on the same seeds: mean ± 95 % t half-width over seeds; "
             "difference = donor's − own, paired t-test across seeds.", "",
             "| model | donor | T | seeds | FID own first step | FID donor's first step | difference | p |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in pairs.iterrows():
        lines.append(f"| {r['model']} | {r['donor']} | {r['steps']} | {r['seeds']} | {r['own']:.2f} ± {r['own_half']:.2f} "
                     f"| {r['donor_fid']:.2f} ± {r['donor_half']:.2f} | {r['diff']:+.2f} ± {r['diff_half']:.2f} "
                     f"| {r['p']:.4f} |")
    if len(groups):
        lines += ["", "## Over trainings", "",
                  "Models of one schedule (several trainings) with donors of one schedule: mean and SD over the "
                  "models of each FID, and the mean difference ± 95 % t half-width over the models (one-sample "
                  "t-test).", "",
                  "| schedule | donor schedule | T | models | own first step: mean (SD) | donor's: mean (SD) "
                  "| difference | p |", "|---|---|---|---|---|---|---|---|"]
        for _, r in groups.iterrows():
            lines.append(f"| {r['schedule']} | {r['donor_schedule']} | {r['steps']} | {r['models']} | "
                         f"{r['own_mean']:.2f} ({r['own_sd']:.2f}) | {r['donor_mean']:.2f} ({r['donor_sd']:.2f}) | "
                         f"{r['diff']:+.2f} ± {r['diff_half']:.2f} | {r['p']:.4f} |")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.first_step", description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="MODEL=DONOR|key=value",
                        help="transformer files or folders, the model and the donor of its first step; "
                        "arguments whose left side is a config key are overrides")
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--steps", type=int, default=8, help="decoding steps T")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sample seeds (at least 2)")
    parser.add_argument("--n", type=int, default=2000, help="samples per decoding (against the first n test images)")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="the rows (.csv, written after each decoding and reused) and the report "
                        "beside it (.md)")
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.pairs if not _is_pair(a)]
    pair_args = [a for a in args.pairs if _is_pair(a)]
    if not pair_args:
        raise ConfigError("give at least one MODEL=DONOR pair of transformer files or folders")
    if len(set(args.seeds)) < 2:
        raise ConfigError(f"--seeds: give at least 2 distinct seeds for an interval, got {args.seeds}")
    if args.steps < 1 or args.batch < 1:
        raise ConfigError(f"--steps and --batch must be positive, got {args.steps} and {args.batch}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".csv":
        raise ConfigError(f"--out {args.out!r}: want a .csv path (the report goes beside it as .md)")
    cfg = load_config(args.config, overrides)
    rows = run(parse_pairs(pair_args), cfg, args.steps, sorted(set(args.seeds)), args.n, args.batch, out, args.device)
    pairs = paired(rows)
    text = report(pairs, across_trainings(pairs))
    publish_report(text, None if out is None else out.with_suffix(".md"))
    return 0


def _is_pair(arg: str) -> bool:
    """A MODEL=DONOR argument names paths (a '/' or a .pt file); ``key=value`` is an override."""
    left = arg.partition("=")[0]
    return "/" in left or left.endswith(".pt") or Path(left).exists()


if __name__ == "__main__":
    raise SystemExit(main())
