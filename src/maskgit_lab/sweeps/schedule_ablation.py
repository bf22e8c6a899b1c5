"""The mask-schedule ablation (the paper's Table 3 and Figure 8) as a resumable Optuna grid.

Cells: every schedule x T x seed. A cell draws N class-balanced samples from its seed and
scores them against the first N test images (FID, IS, precision, recall, KID, class
consistency); each schedule also gets the NLL of held-out test tokens under its training
masking. Reference rows at the same N, one per seed: the real-vs-real floor (N validation
images drawn by the seed, which trained neither the models nor the evaluator) and the
tokenizer ceiling (their reconstructions).

Tables report, per schedule and T, the mean over seeds and a 95% t interval; no number is
a minimum over noisy cells. At each T the schedules whose FID does not differ
significantly from the best one (paired t-test across seeds, p >= 0.05) are marked.

Modes: ``train`` (the default, the paper's design) trains one transformer per schedule and
samples each with its own schedule; ``decode`` uses one trained transformer and varies the
schedule at sampling only, a different question. Missing models are trained first.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from maskgit_lab.decoding.generate import check_guidance, codes_to_images
from maskgit_lab.decoding.schedules import PAPER_LABELS, SCHEDULES, gamma
from maskgit_lab.errors import ConfigError
from maskgit_lab.figures import save_figure
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.sweeps.common import (
    TIMING_NOTE,
    Sweep,
    decode_params,
    ensure_models,
    interval,
    paired_p,
    pm,
    sweep_main,
)
from maskgit_lab.sweeps.paper import PAPER_TABLE3
from maskgit_lab.sweeps.tables import latex, markdown

METRIC_COLS = ("fid", "is", "precision", "recall", "kid", "class_consistency", "nll", "seconds_per_image")
REFERENCES = {"real": "real validation images (floor)", "reconstruction": "tokenizer reconstructions (ceiling)"}
TEST_NOTE = "paired t-test across seeds, two-sided, p >= 0.05"


class ScheduleAblation(Sweep):
    kind = "schedule_ablation"
    title = "Regenerate the paper's Table 3 (mask schedule x decoding steps) on the configured dataset."
    table_file = "schedule_ablation.md"
    grid_keys = ("schedules", "steps", "seeds", "decode_seeds", "report_steps")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mode", choices=("train", "decode"),
                            help="default: the config's sweep.mode (train), or decode with --checkpoint")

    @classmethod
    def config_overrides(cls, args: argparse.Namespace) -> list[str]:
        if args.mode:
            return [f"sweep.mode={args.mode}"]
        # one given model can only be swept in decode mode
        return ["sweep.mode=decode"] if args.checkpoint else []

    @property
    def mode(self) -> str:
        return self.cfg.sweep.mode

    def check(self) -> None:
        if self.mode == "train" and self.args.checkpoint:
            raise ConfigError("--checkpoint names one model: it goes with --mode decode, not --mode train")
        check_guidance(self.cfg.transformer_train.class_dropout, self.cfg.sampling)

    def model_files(self) -> dict[str, Path]:
        if self.mode == "train":
            return ensure_models(self.cfg, self.cfg.sweep.schedules)
        return super().model_files()

    def describe(self) -> dict:
        sw = self.cfg.sweep
        report = min(sw.steps, key=lambda t: (abs(t - sw.report_steps), t))
        return {"mode": self.mode, "schedules": list(sw.schedules), "steps": list(sw.steps), "report_steps": report,
                "num_tokens": self.model().transformer.cfg.num_tokens,
                "train_schedule": self.model(sw.schedules[0]).cfg.transformer_train.schedule,
                "choice_temperature": self.cfg.sampling.choice_temperature}

    def run_name(self) -> str:
        return f"schedule_ablation-{self.mode}"

    def banner(self) -> str:
        sw = self.cfg.sweep
        cells = len(sw.schedules) * len(sw.steps) * len(sw.seeds)
        return (f"schedule ablation {self.sid}: {cells} cells + {2 * len(sw.seeds)} reference cells ({self.mode} "
                f"mode, N={self.n}, seeds {list(sw.seeds)}, {self.evaluation.ext.name})")

    def space(self) -> dict[str, list]:
        sw = self.cfg.sweep
        return {"schedule": list(sw.schedules), "steps": list(sw.steps), "seed": list(sw.seeds)}

    def spaces(self) -> list[dict[str, list]]:
        """The reference rows first (a grid of their own), then every schedule x T x seed."""
        return [{"reference_row": list(REFERENCES), "seed": list(self.cfg.sweep.seeds)}, self.space()]

    def decode_config(self, params: dict):
        return replace(self.cfg.sampling, schedule=params["schedule"], steps=params["steps"]).validated(
            self.model().transformer.cfg.num_tokens)

    def cell_name(self, params: dict) -> str:
        if "reference_row" in params:
            return f"{params['reference_row']} seed={params['seed']}"
        return f"{params['schedule']} T={params['steps']} seed={params['seed']}"

    def cell_params(self, params: dict) -> dict:
        if "reference_row" in params:
            return {**params, "label": REFERENCES[params["reference_row"]], **self.provenance(seed=params["seed"])}
        s = params["schedule"]
        return {**params, **decode_params(self.decode_config(params)), "mode": self.mode,
                "train_schedule": self.model(s).cfg.transformer_train.schedule,
                **self.provenance(s, seed=params["seed"])}

    def reference_images(self, kind: str, seed: int):
        """N validation images drawn by ``seed`` (or their reconstructions), in batches, with labels."""
        val = self.evaluation.datamodule.dataset("val")
        if len(val) < self.n:
            raise ConfigError(f"the reference rows draw N={self.n} validation images; the split holds {len(val)}")
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[: self.n]
        labels = torch.tensor([int(val[i][1]) for i in idx.tolist()])
        tok = self.model().tokenizer

        def stream():
            for chunk in idx.split(self.cfg.sweep.batch_size):
                x = torch.stack([val[i][0] for i in chunk.tolist()])
                if kind == "reconstruction":
                    with torch.inference_mode():
                        x = codes_to_images(tok, tok.encode(x.to(self.device)).flatten(1)).float().cpu()
                yield x

        return stream(), labels

    def run_cell(self, params: dict, run_id: str) -> dict:
        if "reference_row" in params:
            images, labels = self.reference_images(params["reference_row"], params["seed"])
            out = self.score(images, labels, keep=0, seed=params["seed"])
            return out["record"]
        s = params["schedule"]
        out = self.sample_and_score(self.decode_config(params), key=s, keep=self.grid_keep(), seed=params["seed"])
        self.log_grid(run_id, out["images"], f"{s}, T={params['steps']}, seed {params['seed']}")
        return {**out["record"], "nll": self.nll(s, key=s)["nll"]}

    def cell_line(self, params: dict, rec: dict) -> str:
        head = (f"{params['reference_row']:25s}" if "reference_row" in params
                else f"{params['schedule']:12s} T={params['steps']:<3d}")
        line = (f"{head} seed {params['seed']}  FID {rec['fid']:8.2f}  IS {rec['is']:.2f}  "
                f"P {rec['precision']:.3f}  R {rec['recall']:.3f}  CC {rec['class_consistency']:.3f}")
        if "nll" in rec:
            line += f"  NLL {rec['nll']:.3f}  {rec['seconds_per_image'] * 1000:.2f} ms/img"
        return line

    @staticmethod
    def select(df: pd.DataFrame, info: dict) -> pd.DataFrame:
        """The cells of the grid in ``info`` (schedules x steps x seeds, and the reference
        rows of those seeds); sweeps recorded before ``schedules`` was in ``info`` keep all."""
        seeds = {str(s) for s in info["seeds"]}
        keep = df["seed"].astype(str).isin(seeds)
        if "schedule" in df:
            grid = df["schedule"].isin(info.get("schedules", df["schedule"].dropna().unique()))
            grid &= df["steps"].astype(str).isin({str(t) for t in info["steps"]})
            keep &= grid | df["schedule"].isna()
        return df[keep].reset_index(drop=True)

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        summary = write_ablation(df, out_dir, info)
        lines = [f"T={t}: best {b['schedule']} FID {b['fid']:.2f}; not significantly different: "
                 f"{', '.join(b['not_significantly_worse']) or 'none'}" for t, b in summary["best_per_steps"].items()]
        return (Path(out_dir) / "schedule_ablation.md").read_text() + "\n" + "\n".join(lines)


def split_cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(schedule cells in Table 3's order, then T and seed; reference cells)."""
    ref = df[df["reference_row"].notna()].copy() if "reference_row" in df else df.iloc[0:0].copy()
    cells = df[df["reference_row"].isna()].copy() if "reference_row" in df else df.copy()
    for frame in (cells, ref):
        frame["seed"] = frame["seed"].astype(int)
    cells["steps"] = cells["steps"].astype(float).astype(int)
    order = {s: i for i, s in enumerate(SCHEDULES)}
    cells["_o"] = cells["schedule"].map(order)
    cells = cells.sort_values(["_o", "steps", "seed"]).drop(columns="_o").reset_index(drop=True)
    keep = ["schedule", "steps", "seed", *[c for c in METRIC_COLS if c in cells]]
    return cells[keep], ref.reset_index(drop=True)


def aggregate(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, 95% half-width, sd and seed count of every metric per group."""
    rows = []
    for key, g in cells.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for m in METRIC_COLS:
            if m in g:
                mean, half, sd, n = interval(g[m].tolist())
                row.update({f"{m}_mean": mean, f"{m}_ci": half, f"{m}_sd": sd})
                row["seeds"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def significance(cells: pd.DataFrame) -> dict[int, dict]:
    """Per T: the schedule with the lowest mean FID and, for every other, the paired t-test
    p-value of its per-seed FIDs against the best one's (seeds matched)."""
    out = {}
    for t, g in cells.groupby("steps"):
        fid = g.pivot(index="seed", columns="schedule", values="fid")
        fid = fid.dropna()
        best = fid.mean().idxmin()
        p = {s: (1.0 if s == best else paired_p(fid[s], fid[best])) for s in fid.columns}
        out[int(t)] = {"schedule": best, "fid": float(fid[best].mean()), "p": p,
                       "not_significantly_worse": [s for s in fid.columns if s != best and not p[s] < 0.05]}
    return out


def table3(agg: pd.DataFrame, ref: pd.DataFrame, sig: dict, steps: list[int], report: int) -> pd.DataFrame:
    """Schedules (and the reference rows) x FID at each T, the other metrics at ``report``."""
    rows = []
    for s in dict.fromkeys(agg["schedule"]):
        a = agg[agg["schedule"] == s].set_index("steps")
        paper = PAPER_TABLE3.get(s, (None,) * 4)
        row = {"γ": PAPER_LABELS[s]}
        for t in steps:
            if t in a.index:
                mark = " *" if sig[t]["schedule"] == s else (" ≈" if s in sig[t]["not_significantly_worse"] else "")
                row[f"FID T={t}"] = pm(a.loc[t, "fid_mean"], a.loc[t, "fid_ci"]) + mark
        r = a.loc[report] if report in a.index else None
        for col, m, d in (("IS", "is", 2), ("Prec", "precision", 3), ("Rec", "recall", 3),
                          ("Class cons.", "class_consistency", 3), ("NLL", "nll", 3)):
            row[f"{col} (T={report})" if m != "nll" else "NLL"] = (pm(r[f"{m}_mean"], r[f"{m}_ci"], d)
                                                                   if r is not None and f"{m}_mean" in r else "–")
        row["ms/img"] = (f"{1000 * r['seconds_per_image_mean']:.2f}" if r is not None else "–")
        row.update({"paper T": paper[0], "paper FID": paper[1], "paper IS": paper[2], "paper NLL": paper[3]})
        rows.append(row)
    for kind, label in REFERENCES.items():
        g = ref[ref["reference_row"] == kind] if len(ref) else ref
        if not len(g):
            continue
        mean, half, _, _ = interval(g["fid"].tolist())
        row = {"γ": label, **{f"FID T={t}": pm(mean, half) for t in steps}}
        for col, m, d in (("IS", "is", 2), ("Prec", "precision", 3), ("Rec", "recall", 3),
                          ("Class cons.", "class_consistency", 3)):
            row[f"{col} (T={report})"] = pm(*interval(g[m].tolist())[:2], d)
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def fid_vs_steps_figure(agg: pd.DataFrame, ref: pd.DataFrame, path: Path, title: str) -> Path:
    """Figure 8 (right): mean FID against T per schedule, with its 95% interval as a band; the
    floor and ceiling as horizontal bands."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for s, g in agg.groupby("schedule", sort=False):
        g = g.sort_values("steps")
        line, = ax.plot(g["steps"], g["fid_mean"], marker="o", ms=3, label=PAPER_LABELS[s])
        ci = g["fid_ci"].fillna(0)
        ax.fill_between(g["steps"], g["fid_mean"] - ci, g["fid_mean"] + ci, color=line.get_color(), alpha=0.15)
    for kind, style in (("real", ":"), ("reconstruction", "--")):
        g = ref[ref["reference_row"] == kind] if len(ref) else ref
        if len(g):
            mean, half, _, _ = interval(g["fid"].tolist())
            ax.axhline(mean, color="grey", ls=style, lw=1, label=REFERENCES[kind])
            if np.isfinite(half):
                ax.axhspan(mean - half, mean + half, color="grey", alpha=0.1)
    ax.set_xlabel("decoding steps T")
    ax.set_ylabel("FID (mean over seeds, 95% band)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def schedules_figure(schedules: list[str], num_tokens: int, path: Path) -> Path:
    """Figure 8 (left): the mask-ratio curves gamma(r) for N tokens."""
    r = torch.linspace(0, 1, 201, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for s in schedules:
        ax.plot(r.numpy(), gamma(s, r, num_tokens).numpy(), label=PAPER_LABELS[s])
    ax.set_xlabel("r (fraction of decoding done)")
    ax.set_ylabel("mask ratio γ(r)")
    ax.set_title(f"mask schedules, N = {num_tokens} tokens", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def write_ablation(df: pd.DataFrame, out_dir: Path, info: dict) -> dict:
    """schedule_ablation.{csv,md,tex}, schedule_ablation_cells.csv (every seed),
    fid_vs_steps.{csv,png} (means and intervals), schedules.png, summary.json."""
    out_dir = Path(out_dir)
    cells, ref = split_cells(df)
    agg = aggregate(cells, ["schedule", "steps"])
    sig = significance(cells)
    steps = sorted(int(t) for t in cells["steps"].unique())
    report = int(info.get("report_steps", steps[len(steps) // 2]))
    t3 = table3(agg, ref, sig, steps, report)
    seeds = sorted(int(s) for s in cells["seed"].unique())
    mode_text = {"decode": "decode-only (one transformer trained with the "
                           f"{info.get('train_schedule', '?')} schedule; the schedule varies at sampling only: "
                           "a different question from the paper's)",
                 "train": "per-schedule training (one transformer trained with each schedule and sampled "
                          "with it, the paper's design)"}[info["mode"]]
    caption = (f"Schedule ablation (Table 3 shape) on {info['experiment']}: {mode_text}. FID at each T: mean ± "
               f"95% t-interval half-width over {len(seeds)} seeds (independent sample sets {seeds}), N = "
               f"{info['n']} samples per cell vs the first {info['n']} test images, extractor {info['extractor']}, "
               f"choice temperature {info.get('choice_temperature', '?')}. * = lowest mean FID at that T; ≈ = not "
               f"significantly worse than it ({TEST_NOTE}); unmarked = significantly worse. "
               + ("The intervals and tests cover sampling only: each schedule's model is trained once, and "
                  "the variation between trainings of one config is not in them (python -m "
                  "maskgit_lab.sweeps.trainings estimates it from two or more trainings). "
                  if info["mode"] == "train" else "")
               + f"Other columns at "
               f"T = {report}. NLL: held-out test tokens under the schedule's training masking (nats per masked "
               f"token). Reference rows: {REFERENCES['real']} and {REFERENCES['reconstruction']}, N per seed, "
               f"same reference. {TIMING_NOTE.replace('s/img', 'ms/img')}, at T = {report}. Columns 'paper …' "
               "are the paper's ImageNet 256 numbers (best T per schedule), for reference only.")
    atomic_write(out_dir / "schedule_ablation.csv", lambda p: t3.to_csv(p, index=False))
    atomic_write_text(out_dir / "schedule_ablation.md", markdown(t3, caption))
    atomic_write_text(out_dir / "schedule_ablation.tex", latex(t3, caption.replace("_", r"\_").replace("%", r"\%")))
    atomic_write(out_dir / "schedule_ablation_cells.csv", lambda p: pd.concat([cells, ref]).to_csv(p, index=False))
    atomic_write(out_dir / "fid_vs_steps.csv", lambda p: agg.to_csv(p, index=False))
    fid_vs_steps_figure(agg, ref, out_dir / "fid_vs_steps.png",
                        f"{info['experiment']}: FID vs T ({info['mode']} mode, N={info['n']}, {len(seeds)} seeds, "
                        f"{info['extractor']})")
    schedules_figure(list(dict.fromkeys(cells["schedule"])), int(info["num_tokens"]), out_dir / "schedules.png")
    overall = agg.sort_values("fid_mean").iloc[0]
    summary = {
        "mode": info["mode"], "n": int(info["n"]), "seeds": seeds, "extractor": info["extractor"],
        "sweep_id": info["sweep_id"], "test": TEST_NOTE,
        # the lowest mean FID over every (schedule, T): a choice for Table 1, not a reported number
        "best_schedule": overall["schedule"], "best_steps": int(overall["steps"]), "best_fid": float(overall["fid_mean"]),
        "best_per_steps": {str(t): v for t, v in sig.items()},
        "schedules": {s: {str(int(r["steps"])): {k: (None if pd.isna(v) else float(v)) for k, v in r.items()
                                                 if k not in ("schedule", "steps")}
                          for _, r in g.iterrows()} for s, g in agg.groupby("schedule", sort=False)},
        "references": {k: {m: dict(zip(("mean", "ci", "sd", "seeds"), interval(g[m].tolist()), strict=True))
                           for m in ("fid", "is", "precision", "recall", "class_consistency")}
                       for k, g in (ref.groupby("reference_row") if len(ref) else [])},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


main = sweep_main(ScheduleAblation)
