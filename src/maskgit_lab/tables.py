"""Result tables and figures, rebuilt from the MLflow store with pandas.

    python -m maskgit_lab.tables [--config experiments/fmnist.yaml] [--sweep-id ID]

Every sweep logs one nested run per cell; this module reads the finished ones back and
writes the tables, so a table can be regenerated from recorded runs without sampling
again. Without ``--sweep-id`` it rebuilds the newest sweep of each kind in the experiment.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.figures import save_figure
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.schedules import PAPER_LABELS, SCHEDULES, gamma

METRIC_COLS = ("fid", "is", "precision", "recall", "kid", "class_consistency", "nll", "seconds_per_image")


def sweep_runs(tracking_uri: str, experiment: str, sweep_id: str) -> pd.DataFrame:
    """Finished cell runs of a sweep: one row per run, params and metrics as columns."""
    import mlflow

    from maskgit_lab import tracking  # noqa: F401 - telemetry off before mlflow is used

    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(
        experiment_names=[experiment], output_format="pandas",
        filter_string=f"tags.sweep_id = '{sweep_id}' and tags.sweep_role = 'cell' and attributes.status = 'FINISHED'",
    )
    if df.empty:
        raise ConfigError(f"no finished runs of sweep {sweep_id!r} in MLflow experiment {experiment!r}")
    out = pd.DataFrame({c[len("params."):]: df[c] for c in df.columns if c.startswith("params.")})
    for c in df.columns:
        if c.startswith("metrics."):
            out[c[len("metrics."):]] = df[c]
    out["run_id"] = df["run_id"]
    out["cell"] = df["tags.cell"]
    if out["cell"].duplicated().any():
        raise ConfigError(f"sweep {sweep_id} has several finished runs for one cell: {out['cell'][out['cell'].duplicated()].tolist()}")
    if "steps" in out:
        out["steps"] = out["steps"].astype(int)
    return out


def ablation_cells(df: pd.DataFrame) -> pd.DataFrame:
    """All cells in Table 3's row order, then by T."""
    order = {s: i for i, s in enumerate(SCHEDULES)}
    cols = ["schedule", "steps", *[c for c in METRIC_COLS if c in df]]
    cells = df[cols].copy()
    cells["_o"] = cells["schedule"].map(order)
    return cells.sort_values(["_o", "steps"]).drop(columns="_o").reset_index(drop=True)


def best_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """Each schedule's row at its best T (lowest FID; ties go to fewer steps)."""
    idx = cells.sort_values(["fid", "steps"]).groupby("schedule", sort=False).head(1).index
    best = cells.loc[sorted(idx)].reset_index(drop=True)
    return best


def table3(best: pd.DataFrame) -> pd.DataFrame:
    """Our best rows beside the paper's, with the paper's column names."""
    from maskgit_lab.ablation import PAPER_TABLE3

    rows = []
    for _, r in best.iterrows():
        paper = PAPER_TABLE3.get(r["schedule"], (None,) * 4)
        rows.append({
            "γ": PAPER_LABELS[r["schedule"]], "T": int(r["steps"]), "FID↓": r["fid"], "IS↑": r.get("is"),
            "Precision↑": r.get("precision"), "Recall↑": r.get("recall"), "NLL": r.get("nll"),
            "ms/img": None if pd.isna(r.get("seconds_per_image")) else round(1000 * r["seconds_per_image"], 1),
            "paper T": paper[0], "paper FID": paper[1], "paper IS": paper[2], "paper NLL": paper[3],
        })
    return pd.DataFrame(rows, dtype=object)  # object: integer T columns stay integers beside missing values


def _fmt(v, digits=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def markdown(table: pd.DataFrame, caption: str) -> str:
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in table.itertuples(index=False))
    return f"{caption}\n\n{head}{body}"


def latex(table: pd.DataFrame, caption: str) -> str:
    cols = [c.replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("γ", r"$\gamma$")
            for c in table.columns]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule", " & ".join(cols) + r" \\",
             r"\midrule"]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(_fmt(v).replace("–", "--") for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def fid_vs_steps_figure(cells: pd.DataFrame, path: Path, title: str) -> Path:
    """Figure 8 (right): FID against T, one line per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for s, g in cells.groupby("schedule", sort=False):
        ax.plot(g["steps"], g["fid"], marker="o", ms=3, label=PAPER_LABELS[s])
    ax.set_xlabel("decoding steps T")
    ax.set_ylabel("FID")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=150)


def schedules_figure(schedules: list[str], num_tokens: int, path: Path) -> Path:
    """Figure 8 (left): the mask-ratio curves gamma(r) for N tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    """schedule_ablation.{csv,md,tex}, fid_vs_steps.{csv,png}, schedules.png, summary.json."""
    out_dir = Path(out_dir)
    cells = ablation_cells(df)
    best = best_rows(cells)
    t3 = table3(best)
    mode_text = {"decode": "decode-only (one transformer trained with the "
                           f"{info.get('train_schedule', '?')} schedule; the schedule varies at sampling)",
                 "train": "per-schedule training (one transformer trained with each schedule)"}[info["mode"]]
    caption = (f"Schedule ablation (Table 3 shape) on {info['experiment']}: {mode_text}; N = {info['n']} samples "
               f"per cell vs the first {info['n']} test images, extractor {info['extractor']}, seed {info['seed']}, "
               f"T grid {info['steps']}. Columns 'paper …' are the paper's ImageNet 256 numbers, for reference only.")
    atomic_write(out_dir / "schedule_ablation.csv", lambda p: t3.to_csv(p, index=False))
    atomic_write_text(out_dir / "schedule_ablation.md", markdown(t3, caption))
    atomic_write_text(out_dir / "schedule_ablation.tex", latex(t3, caption.replace("_", r"\_").replace("%", r"\%")))
    atomic_write(out_dir / "fid_vs_steps.csv", lambda p: cells.to_csv(p, index=False))
    fid_vs_steps_figure(cells, out_dir / "fid_vs_steps.png",
                        f"{info['experiment']}: FID vs T ({info['mode']} mode, N={info['n']}, {info['extractor']})")
    schedules_figure(list(dict.fromkeys(cells["schedule"])), int(info["num_tokens"]), out_dir / "schedules.png")
    top = best.sort_values("fid").iloc[0]
    summary = {
        "mode": info["mode"], "n": int(info["n"]), "extractor": info["extractor"], "sweep_id": info["sweep_id"],
        "best_schedule": top["schedule"], "best_steps": int(top["steps"]), "best_fid": float(top["fid"]),
        "schedules": {r["schedule"]: {k: (None if pd.isna(r[k]) else float(r[k])) for k in METRIC_COLS if k in r}
                      | {"steps": int(r["steps"])} for _, r in best.iterrows()},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def comparison_table(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1's shape: our rows (in ROWS order) beside the paper's numbers for the same method."""
    from maskgit_lab.comparison import PAPER_TABLE1, ROWS

    rows = []
    by_key = {r["row"]: r for _, r in df.iterrows()}
    for key in ROWS:
        if key not in by_key:
            continue
        r = by_key[key]
        paper = PAPER_TABLE1[r["method"]]
        rows.append({
            "Method": r["label"], "Steps": int(float(r["forward_passes"])), "FID↓": r["fid"], "IS↑": r.get("is"),
            "Prec↑": r.get("precision"), "Rec↑": r.get("recall"), "CAS top-1": r.get("cas_top1"),
            "CAS top-5": r.get("cas_top5"), "Params (M)": round(float(r["parameters"]) / 1e6, 2),
            "ms/img (batch 1)": round(1000 * float(r["seconds_per_image_batch1"]), 2),
            "img/s (large batch)": round(float(r["images_per_second_large_batch"]), 1), "NLL": r.get("nll"),
            "paper FID": paper["fid"], "paper IS": paper["is"], "paper Prec": paper["precision"],
            "paper Rec": paper["recall"], "paper steps": paper["steps"],
            "paper CAS": f"{paper['cas_top1']:.2f}/{paper['cas_top5']:.2f}",
        })
    return pd.DataFrame(rows, dtype=object)


def speedups(df: pd.DataFrame) -> dict:
    """Speed-up of each MaskGIT row over each AR decoder, at batch 1 and at the large batch."""
    by_key = {r["row"]: r for _, r in df.iterrows()}
    out = {}
    for m in ("maskgit-best", "maskgit-T8"):
        for a in ("ar-recompute", "ar-kv-cache"):
            if m in by_key and a in by_key:
                mr, ar = by_key[m], by_key[a]
                out[f"{m}/{a}"] = {
                    "batch1": float(ar["seconds_per_image_batch1"]) / float(mr["seconds_per_image_batch1"]),
                    "large_batch": float(mr["images_per_second_large_batch"])
                    / float(ar["images_per_second_large_batch"]),
                }
    return out


def write_comparison(df: pd.DataFrame, out_dir: Path, info: dict) -> pd.DataFrame:
    """comparison.{csv,md,json}: Table 1's shape plus the speed-up ratios."""
    out_dir = Path(out_dir)
    table = comparison_table(df)
    ratios = speedups(df)
    caption = (
        f"Comparison (Table 1 shape) on {info['experiment']}: N = {info['n']} class-balanced samples per row vs "
        f"the first {info['n']} test images, extractor {info['extractor']}, seed {info['seed']}. Steps = forward "
        f"passes per image. CAS = top-1/top-5 accuracy (%) on the real test set of a classifier trained on the "
        f"samples. Timings: transformer only (tokenizer decoder excluded) on {info.get('machine', '?')} "
        f"({info.get('device', '?')}), large batch = {info.get('large_batch', '?')}. NLL: MaskGIT rows give the "
        "masked-token NLL under the training schedule, AR rows the exact raster-order NLL, in nats per token "
        "(different quantities). Columns 'paper …' are the paper's ImageNet 256 numbers (VQGAN* for the AR rows), "
        "for reference only.")
    lines = [f"- {k.replace('/', ' over ')}: ×{v['batch1']:.1f} at batch 1, ×{v['large_batch']:.1f} at the large batch"
             for k, v in ratios.items()]
    text = markdown(table, caption) + "\nSpeed-up (wall clock):\n\n" + "\n".join(lines) + "\n"
    atomic_write(out_dir / "comparison.csv", lambda p: table.to_csv(p, index=False))
    atomic_write_text(out_dir / "comparison.md", text)
    records = {r["row"]: {c: (None if pd.isna(r[c]) else r[c]) for c in df.columns if c not in ("run_id",)}
               for _, r in df.iterrows()}
    atomic_write_text(out_dir / "comparison.json",
                      json.dumps({**info, "rows": records, "speedups": ratios}, indent=2, default=str) + "\n")
    return table


def write_editing(df: pd.DataFrame, out_dir: Path, info: dict) -> pd.DataFrame:
    """editing.{csv,md}: Table 2's shape (FID of inpainting and outpainting)."""
    from maskgit_lab.edit_table import PAPER_TABLE2, TASK_LABELS, TASKS

    by_task = {r["task"]: r for _, r in df.iterrows()}
    rows = [{"Task": TASK_LABELS[t], "regenerated": f"{100 * float(by_task[t]['regenerated_fraction']):.0f}%",
             "FID↓": by_task[t]["fid"], "IS↑": by_task[t].get("is"), "Prec↑": by_task[t].get("precision"),
             "Rec↑": by_task[t].get("recall"), "class consistency": by_task[t].get("class_consistency"),
             "paper FID": PAPER_TABLE2.get(t)} for t in TASKS if t in by_task]
    table = pd.DataFrame(rows, dtype=object)
    caption = (f"Editing (Table 2 shape) on {info['experiment']}: the first {info['n']} test images with the region "
               f"regenerated by MaskGIT ({info['schedule']}, T={info['steps']}, the image's own class, seed "
               f"{info['seed']}), scored against the same {info['n']} real images with {info['extractor']}. "
               "'paper FID' is the paper's Places2 512 result, for reference only.")
    out_dir = Path(out_dir)
    atomic_write(out_dir / "editing.csv", lambda p: table.to_csv(p, index=False))
    atomic_write_text(Path(out_dir) / "editing.md", markdown(table, caption))
    return table


@cli_errors
def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(prog="python -m maskgit_lab.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--sweep-id", help="rebuild this sweep (default: the newest of each kind)")
    parser.add_argument("--out-dir", help="default: results/<experiment>")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    parents = mlflow.search_runs(experiment_names=[cfg.name], filter_string="tags.sweep_role = 'parent'",
                                 order_by=["attributes.start_time DESC"])
    if parents.empty:
        raise ConfigError(f"no sweeps recorded in MLflow experiment {cfg.name!r} at {cfg.tracking_uri}")
    if args.sweep_id:
        parents = parents[parents["tags.sweep_id"] == args.sweep_id]
        if parents.empty:
            raise ConfigError(f"no sweep {args.sweep_id!r} in experiment {cfg.name!r}")
    out_dir = Path(args.out_dir or f"results/{cfg.name}")
    done = set()
    for _, p in parents.iterrows():
        kind = p["tags.sweep_kind"]
        if kind in done or kind not in WRITERS:
            continue
        info = json.loads(p["tags.sweep_info"])
        df = sweep_runs(cfg.tracking_uri, cfg.name, p["tags.sweep_id"])
        WRITERS[kind](df, out_dir, info)
        print(f"{kind}: {len(df)} cells from sweep {p['tags.sweep_id']} -> {out_dir}/{OUTPUT_NAMES[kind]}")
        done.add(kind)
    return 0


WRITERS = {"schedule_ablation": write_ablation, "comparison": write_comparison, "editing": write_editing}
OUTPUT_NAMES = {"schedule_ablation": "schedule_ablation.md", "comparison": "comparison.md", "editing": "editing.md"}

if __name__ == "__main__":
    raise SystemExit(main())
