"""Table 3 (the schedule ablation) from its cells: the one-training table and the table over
several trainings, each as Markdown, CSV and LaTeX, Figure 8 (FID against T with 95 % bands,
floor and ceiling), the γ curves and a ``summary.json`` for DVC metrics.

Both tables lead with FID at each T, mean ± 95 % half-width, with ``*`` at the lowest mean of
that T, ``≈`` where a schedule is not significantly worse than it and no mark where it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from maskgit_lab import stats as st
from maskgit_lab.decoding.schedules import PAPER_LABELS, SCHEDULES, gamma
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.figures import save_figure
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.sweeps import trainings as tr
from maskgit_lab.sweeps.paper import PAPER_TABLE3
from maskgit_lab.sweeps.tables import latex, markdown, pm

METRIC_COLS = ("fid", "is", "precision", "recall", "kid", "class_consistency", "nll", "seconds_per_image")
REFERENCES = {"real": "real validation images (floor)", "reconstruction": "tokenizer reconstructions (ceiling)"}
SEED_TEST = "paired t-test across seeds, two-sided, p >= 0.05"
TRAINING_TEST = "paired t-test across trainings, two-sided, p >= 0.05"
TIMING = ("ms/img: wall time to produce the images (transformer decoding and the tokenizer's decoder; feature "
          "extraction and metrics excluded)")
TABLE_FILES = ("schedule_ablation.md", "schedule_ablation.csv", "schedule_ablation.tex", "fid_vs_steps.csv",
               "fid_vs_steps.png", "schedules.png", "summary.json")


def split_cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(schedule cells in Table 3's order, then training, T and seed; reference cells)."""
    is_ref = df["reference_row"].notna() if "reference_row" in df else pd.Series(False, index=df.index)
    ref, cells = df[is_ref].copy(), df[~is_ref].copy()
    for frame in (cells, ref):
        frame["seed"] = frame["seed"].astype(int)
    cells["steps"] = cells["steps"].astype(float).astype(int)
    by = ["_o", "steps", "seed"]
    if "training" in cells and cells["training"].notna().all():
        cells["training"] = cells["training"].astype(float).astype(int)
        by.insert(1, "training")
    cells["_o"] = cells["schedule"].map({s: i for i, s in enumerate(SCHEDULES)})
    cells = cells.sort_values(by).drop(columns="_o").reset_index(drop=True)
    keep = (["training"] if "training" in by else []) + ["schedule", "steps", "seed"]
    return cells[[*keep, *[c for c in METRIC_COLS if c in cells]]], ref.reset_index(drop=True)


def aggregate(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, 95% half-width, sd and count of every metric per group."""
    rows = []
    for key, g in cells.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for m in METRIC_COLS:
            if m in g:
                mean, half, sd, n = st.interval(g[m].astype(float).tolist())
                row.update({f"{m}_mean": mean, f"{m}_ci": half, f"{m}_sd": sd})
                row["seeds"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def significance(cells: pd.DataFrame) -> dict[int, dict]:
    """Per T: the schedule with the lowest mean FID and every schedule's paired t-test p
    against it across seeds (one training)."""
    out = {}
    for t, g in cells.groupby("steps"):
        fid = g.pivot(index="seed", columns="schedule", values="fid").dropna()
        best, mark, p = st.marks(fid.mean().to_dict(), lambda s, b, fid=fid: st.paired_p(fid[s], fid[b]))
        out[int(t)] = {"schedule": best, "fid": float(fid[best].mean()), "p": {s: (1.0 if s == best else p[s])
                                                                              for s in fid.columns},
                       "not_significantly_worse": [s for s in fid.columns if mark[s] == st.TIED]}
    return out


def reference_rows(ref: pd.DataFrame, steps: list[int], report: int) -> list[dict]:
    """The floor and ceiling rows (sampling intervals over their seeds)."""
    rows = []
    for kind, label in REFERENCES.items():
        g = ref[ref["reference_row"] == kind] if len(ref) else ref
        if not len(g):
            continue
        row = {"γ": label, **{f"FID T={t}": pm(*st.interval(g["fid"].tolist())[:2]) for t in steps}}
        for col, m, d in (("IS", "is", 2), ("Prec", "precision", 3), ("Rec", "recall", 3),
                          ("Class cons.", "class_consistency", 3)):
            if m in g:
                row[f"{col} (T={report})"] = pm(*st.interval(g[m].astype(float).tolist())[:2], d)
        rows.append(row)
    return rows


def one_training_table(agg: pd.DataFrame, ref: pd.DataFrame, sig: dict, steps: list[int], report: int) -> pd.DataFrame:
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
        row["ms/img"] = f"{1000 * r['seconds_per_image_mean']:.2f}" if r is not None else "–"
        row.update({"paper T": paper[0], "paper FID": paper[1], "paper IS": paper[2], "paper NLL": paper[3]})
        rows.append(row)
    rows += reference_rows(ref, steps, report)
    return pd.DataFrame(rows, dtype=object)


def fid_vs_steps_figure(curves: pd.DataFrame, ref: pd.DataFrame, path: Path, title: str, ylabel: str) -> Path:
    """Figure 8 (right): mean FID against T per schedule (columns schedule, steps, mean, half)
    with its 95 % interval as a band; the floor and ceiling as horizontal bands."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for s, g in curves.groupby("schedule", sort=False):
        g = g.sort_values("steps")
        line, = ax.plot(g["steps"], g["mean"], marker="o", ms=3, label=PAPER_LABELS[s])
        half = g["half"].fillna(0)
        ax.fill_between(g["steps"], g["mean"] - half, g["mean"] + half, color=line.get_color(), alpha=0.15)
    for kind, style in (("real", ":"), ("reconstruction", "--")):
        g = ref[ref["reference_row"] == kind] if len(ref) else ref
        if len(g):
            mean, half, _, _ = st.interval(g["fid"].tolist())
            ax.axhline(mean, color="grey", ls=style, lw=1, label=REFERENCES[kind])
            if np.isfinite(half):
                ax.axhspan(mean - half, mean + half, color="grey", alpha=0.1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(curves["steps"].unique()), [str(t) for t in sorted(curves["steps"].unique())])
    ax.set_xlabel("decoding steps T")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=7)
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


def provenance(df: pd.DataFrame) -> str:
    """'cells measured on MACHINE, DATE[–DATE]' from the cells' own records (where they have them)."""
    machines = sorted(set(df["machine"].dropna().astype(str))) if "machine" in df else []
    dates = sorted(set(df["date"].dropna().astype(str))) if "date" in df else []
    if not machines and not dates:
        return ""
    when = dates[0] if len(dates) == 1 else (f"{dates[0]} to {dates[-1]}" if dates else "")
    return "cells measured on " + "; ".join(machines) + (f", {when}" if when else "")


def _write_tables(table: pd.DataFrame, caption: str, out_dir: Path, extra_md: str = "") -> None:
    atomic_write(out_dir / "schedule_ablation.csv", lambda p: table.to_csv(p, index=False))
    atomic_write_text(out_dir / "schedule_ablation.md", markdown(table, caption) + extra_md)
    atomic_write_text(out_dir / "schedule_ablation.tex", latex(table, caption.replace("_", r"\_").replace("%", r"\%")))


def plain(obj):
    """JSON-ready: numpy numbers as Python numbers, NaN as null."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _json(obj) -> str:
    return json.dumps(plain(obj), indent=2) + "\n"


def _references_summary(ref: pd.DataFrame) -> dict:
    return {k: {m: dict(zip(("mean", "ci", "sd", "seeds"), st.interval(g[m].astype(float).tolist()), strict=True))
                for m in ("fid", "is", "precision", "recall", "class_consistency") if m in g}
            for k, g in (ref.groupby("reference_row") if len(ref) else [])}


def write_one_training(df: pd.DataFrame, out_dir: Path, info: dict) -> dict:
    """The one-training table: schedule_ablation.{csv,md,tex}, schedule_ablation_cells.csv,
    fid_vs_steps.{csv,png}, schedules.png, summary.json; -> the summary."""
    out_dir = Path(out_dir)
    cells, ref = split_cells(df)
    agg = aggregate(cells, ["schedule", "steps"])
    sig = significance(cells)
    steps = sorted(int(t) for t in cells["steps"].unique())
    report = int(info.get("report_steps", steps[len(steps) // 2]))
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
               f"significantly worse than it ({SEED_TEST}); unmarked = significantly worse. "
               + ("The intervals and tests cover sampling only: each schedule's model is trained once, so they "
                  "speak for these trained models (--trainings K puts the variation between trainings in). "
                  if info["mode"] == "train" else "")
               + f"Other columns at T = {report}. NLL: held-out test tokens under the schedule's training masking "
               f"(nats per masked token). Reference rows: {REFERENCES['real']} and {REFERENCES['reconstruction']}, "
               f"N per seed, same reference. {TIMING}, at T = {report}. Columns 'paper …' are the paper's ImageNet "
               "256 numbers (best T per schedule), for reference only.")
    where = provenance(df)
    _write_tables(one_training_table(agg, ref, sig, steps, report), caption + (f" ({where})" if where else ""), out_dir)
    atomic_write(out_dir / "schedule_ablation_cells.csv", lambda p: pd.concat([cells, ref]).to_csv(p, index=False))
    curves = agg.rename(columns={"fid_mean": "mean", "fid_ci": "half"})
    atomic_write(out_dir / "fid_vs_steps.csv", lambda p: agg.to_csv(p, index=False))
    fid_vs_steps_figure(curves, ref, out_dir / "fid_vs_steps.png",
                        f"{info['experiment']}: FID vs T ({info['mode']} mode, one training, N={info['n']}, "
                        f"{len(seeds)} seeds, {info['extractor']})" + (f"\n{where}" if where else ""),
                        "FID (mean over seeds, 95% band)")
    schedules_figure(list(dict.fromkeys(cells["schedule"])), int(info["num_tokens"]), out_dir / "schedules.png")
    overall = agg.sort_values("fid_mean").iloc[0]
    summary = {
        "mode": info["mode"], "trainings": 1, "n": int(info["n"]), "seeds": seeds, "extractor": info["extractor"],
        "sweep_id": info["sweep_id"], "test": SEED_TEST,
        # the lowest mean FID over every (schedule, T): a choice for Table 1, not a reported number
        "best_schedule": overall["schedule"], "best_steps": int(overall["steps"]), "best_fid": float(overall["fid_mean"]),
        "best_per_steps": {str(t): v for t, v in sig.items()},
        "schedules": {s: {str(int(r["steps"])): {k: v for k, v in r.items() if k not in ("schedule", "steps")}
                          for _, r in g.iterrows()} for s, g in agg.groupby("schedule", sort=False)},
        "references": _references_summary(ref),
    }
    atomic_write_text(out_dir / "summary.json", _json(summary))
    return summary


def trainings_table(head: pd.DataFrame, agg: pd.DataFrame, ref: pd.DataFrame, steps: list[int],
                    report: int) -> pd.DataFrame:
    """Schedules x (FID at each T with its mark, the sd between trainings at each T, class
    consistency and NLL at ``report``), then the reference rows."""
    rows = []
    for s in dict.fromkeys(head["schedule"]):
        h = head[head["schedule"] == s].set_index("steps")
        row = {"γ": PAPER_LABELS[s]}
        for t in steps:
            row[f"FID T={t}"] = f"{pm(h.loc[t, 'mean'], h.loc[t, 'half'])} {h.loc[t, 'mark']}".rstrip()
        for t in steps:
            row[f"SD T={t}"] = f"{h.loc[t, 'sd']:.2f}"
        a = agg[(agg["schedule"] == s) & (agg["steps"] == report)]
        for col, m, d in (("Class cons.", "class_consistency", 3), ("NLL", "nll", 3)):
            key = f"{col} (T={report})" if m != "nll" else "NLL"
            row[key] = pm(a[f"{m}_mean"].iloc[0], a[f"{m}_ci"].iloc[0], d) if len(a) and f"{m}_mean" in a else "–"
        rows.append(row)
    for r in reference_rows(ref, steps, report):
        rows.append({k: v for k, v in r.items() if k == "γ" or k.startswith("FID") or k.startswith("Class")})
    return pd.DataFrame(rows, dtype=object)


def _detail_lines(means: pd.DataFrame, sigma: pd.DataFrame, k: int) -> list[str]:
    """The report under the table: sigma_b per T, the other pooled table, worst-schedule tests,
    T contrasts within each training's model."""
    lines = ["", "### Variation between trainings, per T", "",
             "sigma_b: the sd of one training's FID around its schedule's expectation, after a shift shared by "
             "every schedule of a training (it changes no comparison) and a cell mean's sampling variance are "
             "taken out (95 % chi-square interval, (S - 1)(k - 1) dof). Levene: p that every schedule varies alike.",
             "", "| T | sigma_b | 95 % interval | dof | sampling sd of a cell mean | Levene p |", "|---|---|---|---|---|---|"]
    levene = tr.equal_variation_p(means)
    for t, r in sigma.iterrows():
        lines.append(f"| {t} | {r['sigma_b']:.2f} | {r['sigma_b_lo']:.2f}–{r['sigma_b_hi']:.2f} | {int(r['dof'])} | "
                     f"{r['sampling_sd']:.2f} | {levene[t]:.4f} |")
    pooled = tr.pooled_table(means, sigma)
    if k >= 3:
        title = ("every schedule's interval from the common sigma_b (assumes schedules vary alike; t with "
                 "(S - 1)(k - 1) dof, marks by t-tests on that variance)")
        lines += ["", f"### The same table with {title}", "", *_grid_lines(pooled)]
    p_common = lambda a, b: st.diff_p(a["mean"], a["var"], b["mean"], b["var"], a["dof"])  # noqa: E731
    worst = [("common sigma_b", tr.worst_test(pooled, p_common))]
    if k >= 3:
        worst.insert(0, ("each schedule's own variation, paired across trainings",
                         tr.worst_test(tr.own_variation_table(means),
                                       lambda a, b: st.paired_p(a["per_training"], b["per_training"]))))
    lines += ["", "### Worst schedule at each T against the runner-up", ""]
    for name, w in worst:
        lines += [f"- T = {t}: {r['worst']} {r['diff']:+.2f} FID against {r['runner_up']}, p = {r['p']:.4f} ({name})"
                  for t, r in w.iterrows()]
    if k >= 3:
        lines += ["", "### FID from one T to the next within each training's model", "",
                  f"Per training the change of the schedule's FID (the same model at both T); mean ± 95 % t "
                  f"half-width over the {k} trainings ({k - 1} dof) and the one-sample t-test's p.", "",
                  "| schedule | T | mean ± 95 % | p |", "|---|---|---|---|"]
        for _, r in tr.steps_contrasts(means).iterrows():
            lines.append(f"| {r['schedule']} | {r['from']} → {r['to']} | {r['mean']:+.2f} ± {r['half']:.2f} | "
                         f"{r['p']:.4f} |")
    return lines


def _grid_lines(table: pd.DataFrame) -> list[str]:
    steps = sorted(table["steps"].unique())
    lines = ["| schedule | " + " | ".join(f"FID T={t}" for t in steps) + " |", "|---|" + "---|" * len(steps)]
    for s in dict.fromkeys(table["schedule"]):
        row = table[table["schedule"] == s].set_index("steps")
        lines.append(f"| {PAPER_LABELS[s]} | " + " | ".join(
            f"{pm(row.loc[t, 'mean'], row.loc[t, 'half'])} {row.loc[t, 'mark']}".rstrip() for t in steps) + " |")
    return lines


def write_trainings(df: pd.DataFrame, out_dir: Path, info: dict) -> dict:
    """The table over k >= 2 trainings (``df``: cells with a ``training`` column, and the
    reference rows): schedule_ablation.{csv,md,tex}, fid_vs_steps.{csv,png}, schedules.png,
    summary.json; -> the summary."""
    out_dir = Path(out_dir)
    cells, ref = split_cells(df)
    means = tr.training_means(cells)
    trainings = means.attrs["trainings"]
    k = len(trainings)
    sigma = tr.between_trainings(means)
    head, method = tr.headline(means, sigma)
    steps = sorted(int(t) for t in cells["steps"].unique())
    report = int(info.get("report_steps", steps[len(steps) // 2]))
    seeds = sorted(int(s) for s in cells["seed"].unique())
    agg = aggregate(cells, ["schedule", "steps"])
    how = ({"own": f"each schedule's own variation between the trainings (its stability variance: the shift shared "
                   f"by a training's schedules removed; t with {k - 1} dof); * = lowest mean at that T, ≈ = not "
                   f"significantly worse than it ({TRAINING_TEST}), unmarked = significantly worse",
            "common": "the variation between trainings common to all schedules (sigma_b; t with (S - 1)(k - 1) "
                      "dof); * = lowest mean at that T, ≈ = not significantly worse than it (t-test on that "
                      "variance, p >= 0.05), unmarked = significantly worse"})[method]
    caption = (f"Schedule ablation (Table 3 shape) on {info['experiment']} over {k} trainings (training seeds "
               f"{trainings}; every schedule's transformer trained once per training on one tokenizer, each "
               f"sampled on seeds {seeds}). FID at each T: the mean over the trainings ± 95% half-width from {how}. "
               f"SD: the schedule's own sd between trainings. N = {info['n']} samples per cell vs the first "
               f"{info['n']} test images, extractor {info['extractor']}, choice temperature "
               f"{info.get('choice_temperature', '?')}. Class consistency and NLL at T = {report}: mean ± 95% over "
               "trainings and seeds. Reference rows (floor and ceiling): sampling intervals over their seeds.")
    where = provenance(df)
    table = trainings_table(head, agg, ref, steps, report)
    _write_tables(table, caption + (f" ({where})" if where else ""), out_dir, "\n".join(_detail_lines(means, sigma, k))
                  + "\n")
    curves = head[["schedule", "steps", "mean", "half", "sd", "mark"]]
    atomic_write(out_dir / "fid_vs_steps.csv", lambda p: curves.to_csv(p, index=False))
    fid_vs_steps_figure(curves, ref, out_dir / "fid_vs_steps.png",
                        f"{info['experiment']}: FID vs T over {k} trainings (N={info['n']}, {len(seeds)} seeds "
                        f"each, {info['extractor']}; bands: 95% with the variation between trainings)"
                        + (f"\n{where}" if where else ""), "FID (mean over trainings, 95% band)")
    schedules_figure(list(dict.fromkeys(cells["schedule"])), int(info["num_tokens"]), out_dir / "schedules.png")
    best = {str(t): head[(head["steps"] == t) & (head["mark"] == st.BEST)]["schedule"].iloc[0] for t in steps}
    summary = {
        "mode": "train", "trainings": k, "training_seeds": trainings, "n": int(info["n"]), "seeds": seeds,
        "extractor": info["extractor"], "table_id": info["sweep_id"], "intervals": method,
        "test": TRAINING_TEST if method == "own" else "t-test on the common between-training variance",
        "best_per_steps": best,
        "schedules": {s: {str(int(r["steps"])): {"mean": r["mean"], "half": r["half"], "sd": r["sd"],
                                                  "mark": r["mark"], "p_vs_best": r["p_vs_best"]}
                          for _, r in g.iterrows()} for s, g in head.groupby("schedule", sort=False)},
        "sigma_b": {str(t): {"sd": r["sigma_b"], "lo": r["sigma_b_lo"], "hi": r["sigma_b_hi"], "dof": int(r["dof"])}
                    for t, r in sigma.iterrows()},
        "levene_p": {str(t): p for t, p in tr.equal_variation_p(means).items()},
        "references": _references_summary(ref),
    }
    atomic_write_text(out_dir / "summary.json", _json(summary))
    return summary


def select_grid(df: pd.DataFrame, info: dict) -> pd.DataFrame:
    """The cells of the grid ``info`` describes: its schedules x T x seeds (and trainings
    0..K-1 when it is a table over trainings), and the reference rows of its seeds."""
    keep = pd.to_numeric(df["seed"], errors="coerce").isin(info["seeds"])
    if "schedule" in df:
        grid = df["schedule"].isin(info["schedules"]) & pd.to_numeric(df["steps"], errors="coerce").isin(info["steps"])
        keep &= grid | df["schedule"].isna()
    if "training" in df and info.get("trainings"):
        t = pd.to_numeric(df["training"], errors="coerce")
        keep &= t.isna() | (t < int(info["trainings"]))
    return df[keep].reset_index(drop=True)


def write_over_trainings(df: pd.DataFrame, out_dir: Path, info: dict) -> dict:
    """Record ``df``'s cells in ``out_dir`` and write the table over ``info``'s grid from every
    recorded cell; -> its summary. A training of the grid with no cells is a one-line error."""
    cells = tr.record(out_dir, info, tr.normalize(df))
    chosen = select_grid(cells, info)
    have = set(chosen["training"].dropna().astype(int)) if "training" in chosen else set()
    missing = sorted(set(range(int(info["trainings"]))) - have)
    if missing:
        raise ConfigError(f"{out_dir}: trainings {missing} have no recorded cells; run the sweep with "
                          f"--trainings {info['trainings']} to measure them")
    return write_trainings(chosen, out_dir, {**info, "sweep_id": info["table_id"]})


def rebuild_from_cells(folder: Path) -> dict:
    """The table over trainings rebuilt from the cells recorded in ``folder`` (no sampling, no
    MLflow); -> its summary."""
    info, cells = tr.read_record(folder)
    if info is None:
        raise ConfigError(f"{folder} holds no recorded cells ({tr.CELLS_FILE} and {tr.TABLE_FILE}): not a table "
                          "over trainings")
    summary = write_over_trainings(cells, folder, info)
    print(f"table over {summary['trainings']} trainings: {len(cells)} recorded cells -> {folder}/"
          "schedule_ablation.md")
    return summary


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.table3",
                            description="Rebuild a table over trainings from the cells recorded in its folder.")
    parser.add_argument("folder", help="the table's results folder, e.g. results/fmnist/table3_trainings")
    rebuild_from_cells(Path(parser.parse_args(argv).folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
