"""Which positions a decode reveals, against the schedule and T: order (confidence, random,
Halton) x schedule x T x seed, as a resumable Optuna grid like Table 3.

Each schedule samples its own trained model (train mode, as Table 3) with the same counts per
step under every order, so a row pair differs only in which positions are revealed. Per
schedule and T the orders are compared on the same seeds (paired t-test): ``*`` the lowest
mean FID, ``≈`` not significantly worse, no mark significantly worse. Defaults: cosine,
arccos and linear at T = 4, 8, 16, 32.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from maskgit_lab import stats as st
from maskgit_lab.decoding.schedules import PAPER_LABELS, SCHEDULES
from maskgit_lab.errors import ConfigError
from maskgit_lab.figures import save_figure
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.sweeps import table3 as T3
from maskgit_lab.sweeps.common import Sweep, sweep_main
from maskgit_lab.sweeps.schedule_ablation import ScheduleAblation
from maskgit_lab.sweeps.tables import latex, markdown, pm

ORDER_LABELS = {"confidence": "confidence (MaskGIT)", "random": "random", "halton": "Halton"}


class OrderAblation(ScheduleAblation):
    kind = "order_ablation"
    title = "Which positions are revealed (confidence, random, Halton) x mask schedule x T, with 95% intervals."
    table_file = "order_ablation.md"
    folder = "order_ablation"
    grid_keys = (*ScheduleAblation.grid_keys, "orders")

    @classmethod
    def create(cls, cfg, args) -> Sweep:
        return cls(cfg, args)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mode", choices=("train", "decode"),
                            help="default: the config's sweep.mode (train), or decode with --checkpoint")

    @classmethod
    def config_defaults(cls) -> list[str]:
        return ["sweep.schedules=[cosine,arccos,linear]", "sweep.steps=[4,8,16,32]"]

    @classmethod
    def config_overrides(cls, args: argparse.Namespace) -> list[str]:
        if args.mode:
            return [f"sweep.mode={args.mode}"]
        return ["sweep.mode=decode"] if args.checkpoint else []

    def check(self) -> None:
        super().check()
        if self.cfg.sweep.trainings:
            raise ConfigError("the order ablation is one training's; --trainings is Table 3's (schedule_ablation.py)")

    def describe(self) -> dict:
        return {**super().describe(), "orders": list(self.cfg.sweep.orders),
                "halton_shift": self.cfg.sampling.halton_shift}

    def run_name(self) -> str:
        return f"order_ablation-{self.mode}"

    def banner(self) -> str:
        sw = self.cfg.sweep
        cells = len(sw.orders) * len(sw.schedules) * len(sw.steps) * len(sw.seeds)
        return (f"order ablation {self.sid}: {cells} cells + {2 * len(sw.seeds)} reference cells ({self.mode} mode, "
                f"orders {list(sw.orders)}, N={self.n}, seeds {list(sw.seeds)}, {self.evaluation.ext.name})")

    def space(self) -> dict[str, list]:
        sw = self.cfg.sweep
        return {"order": list(sw.orders), "schedule": list(sw.schedules), "steps": list(sw.steps),
                "seed": list(sw.seeds)}

    def decode_config(self, params: dict):
        return replace(super().decode_config(params), order=params["order"]).validated(self.num_tokens())

    def cell_name(self, params: dict) -> str:
        return super().cell_name(params) if "reference_row" in params else f"{params['order']} " + super().cell_name(
            params)

    def cell_line(self, params: dict, rec: dict) -> str:
        return (f"{params['order']:10s} " if "order" in params else " " * 11) + super().cell_line(params, rec)

    @staticmethod
    def select(df: pd.DataFrame, info: dict) -> pd.DataFrame:
        df = T3.select_grid(df, info)
        return df[df["order"].isna() | df["order"].isin(info["orders"])].reset_index(drop=True) if "order" in df else df

    @staticmethod
    def write(df: pd.DataFrame, out_dir: Path, info: dict) -> str:
        write_order_ablation(df, out_dir, info)
        return (Path(out_dir) / "order_ablation.md").read_text()


def _cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(order cells sorted by schedule, order, T, seed; reference cells)."""
    is_ref = df["reference_row"].notna() if "reference_row" in df else pd.Series(False, index=df.index)
    ref, cells = df[is_ref].copy(), df[~is_ref].copy()
    for frame in (cells, ref):
        frame["seed"] = frame["seed"].astype(int)
    cells["steps"] = cells["steps"].astype(float).astype(int)
    cells["fid"] = cells["fid"].astype(float)
    order_rank = {o: i for i, o in enumerate(ORDER_LABELS)}
    cells["_s"], cells["_o"] = cells["schedule"].map({s: i for i, s in enumerate(SCHEDULES)}), cells["order"].map(order_rank)
    cells = cells.sort_values(["_s", "_o", "steps", "seed"]).drop(columns=["_s", "_o"]).reset_index(drop=True)
    return cells, ref.reset_index(drop=True)


def compare_orders(cells: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T and order: mean FID ± 95 % half-width over seeds, the mark among the
    orders (paired t-test across seeds against the best), and Halton's and random's paired
    difference from the confidence order (mean, half-width, p)."""
    rows = []
    for (schedule, steps), g in cells.groupby(["schedule", "steps"], sort=False):
        fid = g.pivot(index="seed", columns="order", values="fid").dropna()
        _, mark, p = st.marks(fid.mean().to_dict(), lambda o, b, fid=fid: st.paired_p(fid[o], fid[b]))
        for o in fid.columns:
            mean, half, _, n = st.interval(fid[o].tolist())
            row = {"schedule": schedule, "steps": int(steps), "order": o, "mean": mean, "half": half, "seeds": n,
                   "mark": mark[o], "p_vs_best": p[o]}
            if "confidence" in fid and o != "confidence":
                d_mean, d_half, _, _ = st.interval((fid[o] - fid["confidence"]).tolist())
                row.update(diff_vs_confidence=d_mean, diff_half=d_half, diff_p=st.paired_p(fid[o], fid["confidence"]))
            rows.append(row)
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, ref: pd.DataFrame, path: Path, title: str) -> Path:
    """FID against T with 95 % bands, one panel per schedule, one line per order; the floor and
    ceiling as grey lines."""
    schedules = list(dict.fromkeys(table["schedule"]))
    fig, axes = plt.subplots(1, len(schedules), figsize=(3.4 * len(schedules), 3.3), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], schedules, strict=True):
        for o, g in table[table["schedule"] == s].groupby("order", sort=False):
            g = g.sort_values("steps")
            line, = ax.plot(g["steps"], g["mean"], marker="o", ms=3, label=ORDER_LABELS.get(o, o))
            half = g["half"].fillna(0)
            ax.fill_between(g["steps"], g["mean"] - half, g["mean"] + half, color=line.get_color(), alpha=0.15)
        for kind, style in (("real", ":"), ("reconstruction", "--")):
            r = ref[ref["reference_row"] == kind] if len(ref) else ref
            if len(r):
                ax.axhline(float(r["fid"].astype(float).mean()), color="grey", ls=style, lw=1, label=T3.REFERENCES[kind])
        steps = sorted(table["steps"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(t) for t in steps])
        ax.set_title(PAPER_LABELS[s], fontsize=9)
        ax.set_xlabel("decoding steps T")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("FID (mean over seeds, 95% band)")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def write_order_ablation(df: pd.DataFrame, out_dir: Path, info: dict) -> dict:
    """order_ablation.{csv,md,tex}, order_ablation_cells.csv, order_vs_steps.png, summary.json."""
    out_dir = Path(out_dir)
    cells, ref = _cells(df)
    table = compare_orders(cells)
    steps = sorted(int(t) for t in cells["steps"].unique())
    seeds = sorted(int(s) for s in cells["seed"].unique())
    rows = []
    for (s, o), g in table.groupby(["schedule", "order"], sort=False):
        g = g.set_index("steps")
        rows.append({"γ": PAPER_LABELS[s], "order": ORDER_LABELS.get(o, o),
                     **{f"FID T={t}": f"{pm(g.loc[t, 'mean'], g.loc[t, 'half'])} {g.loc[t, 'mark']}".rstrip()
                        for t in steps if t in g.index}})
    for r in T3.reference_rows(ref, steps, info.get("report_steps", steps[0])):
        rows.append({"γ": r["γ"], "order": "–", **{k: v for k, v in r.items() if k.startswith("FID")}})
    where = T3.provenance(df)
    caption = (f"Order ablation on {info['experiment']} ({info['mode']} mode: "
               + ("each schedule's own trained model" if info["mode"] == "train" else "one model")
               + f"; the same counts per step under every order): FID at each T, mean ± 95% t half-width over "
               f"{len(seeds)} seeds {seeds}, N = {info['n']} samples per cell vs the first {info['n']} test images, "
               f"extractor {info['extractor']}; choice temperature {info.get('choice_temperature', '?')} (confidence "
               f"order only){'; Halton order shifted per sample' if info.get('halton_shift') else ''}. Per schedule and "
               f"T: * = the order with the lowest mean FID, ≈ = not significantly worse (paired t-test across seeds, "
               f"two-sided, p >= 0.05), unmarked = significantly worse." + (f" ({where})" if where else ""))
    out = pd.DataFrame(rows, dtype=object)
    lines = ["", "Halton and random order against the confidence order (paired differences across seeds; "
             "negative: fewer FID than confidence):", "",
             "| schedule | order | " + " | ".join(f"T={t}" for t in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for (s, o), g in table[table["order"] != "confidence"].groupby(["schedule", "order"], sort=False):
        if "diff_vs_confidence" not in g:
            continue
        g = g.set_index("steps")
        lines.append(f"| {PAPER_LABELS[s]} | {ORDER_LABELS.get(o, o)} | " + " | ".join(
            f"{g.loc[t, 'diff_vs_confidence']:+.2f} ± {g.loc[t, 'diff_half']:.2f} (p {g.loc[t, 'diff_p']:.3g})"
            for t in steps if t in g.index) + " |")
    atomic_write(out_dir / "order_ablation.csv", lambda p: out.to_csv(p, index=False))
    atomic_write_text(out_dir / "order_ablation.md", markdown(out, caption) + "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "order_ablation.tex", latex(out, caption.replace("_", r"\_").replace("%", r"\%")))
    keep = ["order", "schedule", "steps", "seed", *[c for c in T3.METRIC_COLS if c in cells]]
    atomic_write(out_dir / "order_ablation_cells.csv",
                 lambda p: pd.concat([cells[keep], ref]).to_csv(p, index=False))
    figure(table, ref, out_dir / "order_vs_steps.png",
           f"{info['experiment']}: FID vs T per order ({info['mode']} mode, N={info['n']}, {len(seeds)} seeds, "
           f"{info['extractor']})" + (f"\n{where}" if where else ""))
    summary = {"mode": info["mode"], "n": int(info["n"]), "seeds": seeds, "extractor": info["extractor"],
               "sweep_id": info["sweep_id"], "orders": list(dict.fromkeys(table["order"])),
               "cells": table.to_dict(orient="records")}
    atomic_write_text(out_dir / "summary.json", json.dumps(T3.plain(summary), indent=2) + "\n")
    return summary


main = sweep_main(OrderAblation)
