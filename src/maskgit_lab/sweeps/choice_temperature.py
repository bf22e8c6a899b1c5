"""Choosing the Gumbel (choice) temperature tau by measurement, for one trained model.

At step s the decoder ranks unknown positions by log p(sampled token) + tau * anneal(s) * g,
g ~ Gumbel(0, 1) (standard deviation pi / sqrt 6). Where the noise's spread dwarfs the
spread of log p, the order in which tokens are kept is close to random and the schedule
cannot matter. This sweep shows both spreads step by step (``logp_vs_gumbel.png``) and
scores a grid of tau values on every seed (``choice_temperature.{csv,md,png}``: FID and class
consistency, mean ± 95% interval), at the config's schedule and ``sweep.report_steps``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from maskgit_lab.decoding.generate import generate_codes
from maskgit_lab.errors import ConfigError
from maskgit_lab.figures import save_figure
from maskgit_lab.stats import interval
from maskgit_lab.sweeps.common import Sweep, decode_params, sweep_main
from maskgit_lab.sweeps.tables import pm, write_table

GUMBEL_SD = math.pi / math.sqrt(6)
DEFAULT_TAUS = "0,0.25,0.5,1,2,4.5"


def parse_taus(text: str) -> list[float]:
    try:
        taus = [float(x) for x in text.split(",")]
    except ValueError:
        taus = []
    if not taus or any(not t >= 0 for t in taus) or len(set(taus)) != len(taus):
        raise ConfigError(f"--taus {text!r} must be distinct comma-separated numbers >= 0, e.g. {DEFAULT_TAUS}")
    return taus


class ChoiceTemperature(Sweep):
    kind = "choice_temperature"
    title = "Scan the Gumbel (choice) temperature of the decoder and compare log p's spread with the noise's."
    table_file = "choice_temperature.md"
    folder = "choice_temperature"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--taus", default=DEFAULT_TAUS, help=f"choice temperatures to score (default {DEFAULT_TAUS})")

    def check(self) -> None:
        self.taus = parse_taus(self.args.taus)

    def decode_config(self, tau: float):
        return replace(self.cfg.sampling, steps=self.cfg.sweep.report_steps, choice_temperature=tau).validated(
            self.model().transformer.cfg.num_tokens)

    def identity(self) -> dict:
        return {**super().identity(), "taus": self.taus}

    def describe(self) -> dict:
        return {"schedule": self.cfg.sampling.schedule, "steps": self.cfg.sweep.report_steps,
                "train_schedule": self.model().cfg.transformer_train.schedule}

    def space(self) -> dict[str, list]:
        return {"choice_temperature": self.taus, "seed": list(self.cfg.sweep.seeds)}

    def cell_name(self, params: dict) -> str:
        return f"tau={params['choice_temperature']} seed={params['seed']}"

    def cell_params(self, params: dict) -> dict:
        return {**params, **decode_params(self.decode_config(params["choice_temperature"]), params),
                **self.provenance(seed=params["seed"])}

    def run_cell(self, params: dict, run_id: str) -> dict:
        out = self.sample_and_score(self.decode_config(params["choice_temperature"]), seed=params["seed"])
        return out["record"]

    def cell_line(self, params: dict, rec: dict) -> str:
        return (f"tau {params['choice_temperature']:<5g} seed {params['seed']}  FID {rec['fid']:8.2f}  "
                f"P {rec['precision']:.3f}  R {rec['recall']:.3f}  CC {rec['class_consistency']:.3f}")

    def finish(self) -> str:
        text = super().finish()
        spread_figure(self, self.out_dir / "logp_vs_gumbel.png")
        return text

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        df = df.assign(choice_temperature=df["choice_temperature"].astype(float))
        rows, agg = [], []
        for tau, g in df.groupby("choice_temperature"):
            stats = {m: interval(g[m].astype(float).tolist())[:2] for m in
                     ("fid", "precision", "recall", "class_consistency")}
            agg.append({"tau": tau, **{f"{m}_mean": v[0] for m, v in stats.items()},
                        **{f"{m}_ci": v[1] for m, v in stats.items()}})
            rows.append({"τ": f"{tau:g}", "FID↓": pm(*stats["fid"]), "Prec↑": pm(*stats["precision"], 3),
                         "Rec↑": pm(*stats["recall"], 3), "class consistency": pm(*stats["class_consistency"], 3)})
        agg = pd.DataFrame(agg)
        caption = (f"Choice temperature τ on {info['experiment']}: the {info['train_schedule']}-trained model, "
                   f"{info['schedule']} schedule, T = {info['steps']}, N = {info['n']} per seed; mean ± 95% "
                   f"t-interval half-width over seeds {info.get('seeds')}. logp_vs_gumbel.png compares the spread "
                   "of log p of the sampled tokens with the Gumbel term's at each step.")
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        ax.errorbar(agg["tau"], agg["fid_mean"], yerr=agg["fid_ci"].fillna(0), marker="o", ms=3, capsize=2)
        ax.set_xscale("symlog", linthresh=0.25)
        ax.set_xlabel("choice temperature τ")
        ax.set_ylabel("FID (mean, 95% interval)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, Path(out_dir) / "choice_temperature.png", dpi=150)
        return write_table(pd.DataFrame(rows, dtype=object), out_dir, "choice_temperature", caption)


@torch.inference_mode()
def spread_figure(sweep: ChoiceTemperature, path: Path, n: int = 500) -> Path:
    """Per step: the interquartile range and standard deviation of log p of the sampled tokens
    (over the unknown positions of n samples) against the Gumbel term's standard deviation
    tau * anneal(s) * pi / sqrt(6) for each scanned tau."""
    m = sweep.model()
    dcfg = sweep.decode_config(sweep.cfg.sampling.choice_temperature)
    labels = torch.arange(n) % m.num_classes
    gen = torch.Generator().manual_seed(sweep.cfg.sweep.seed)
    res = generate_codes(m.sampler, labels.to(sweep.device), dcfg, gen, return_history=True)
    lp = res.log_probs.float().cpu()  # [T, B, N]
    steps = dcfg.steps
    sd, iqr = [], []
    for s in range(steps):
        v = lp[s][torch.isfinite(lp[s])]
        sd.append(float(v.std()) if v.numel() > 1 else float("nan"))
        q = torch.quantile(v, torch.tensor([0.25, 0.75])) if v.numel() > 1 else torch.tensor([np.nan, np.nan])
        iqr.append(float(q[1] - q[0]))
    x = np.arange(1, steps + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(x, sd, "k-o", ms=3, label="log p of sampled tokens: sd")
    ax.plot(x, iqr, "k--", label="log p: interquartile range")
    for tau in sweep.taus:
        if tau > 0:
            anneal = (1 - x / steps if dcfg.gumbel_anneal == "official"
                      else 1 - (x - 1) / max(1, steps - 1))
            ax.plot(x, tau * anneal * GUMBEL_SD, alpha=0.7, label=f"Gumbel term sd, τ = {tau:g}")
    ax.set_xlabel("decoding step")
    ax.set_ylabel("nats")
    ax.set_title(f"{dcfg.schedule}, T = {steps}, N = {n} (log p at τ = {dcfg.choice_temperature:g})", fontsize=8)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


main = sweep_main(ChoiceTemperature)
