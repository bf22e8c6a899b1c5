"""Two trainings of the same Table 3, side by side: how far the table moves when its models
are trained again, and the table pooled over both with that variation in its intervals.

    python -m maskgit_lab.sweeps.trainings A/schedule_ablation_cells.csv B/schedule_ablation_cells.csv \\
        [--out results/fmnist/between_trainings.md]

Each input is the per-cell file of a per-schedule (``train`` mode) schedule ablation: the
same schedules and T, models trained twice. Table 3's own intervals cover sampling only
(the seeds); a schedule's model is trained once. This estimates what they leave out.

Per T, with ``d_s`` the difference of schedule s's mean FID between the trainings and
``v_s`` its sampling variance (the sum of both means' squared standard errors): a shift
shared by every schedule (a machine, a library) changes no comparison, so the spread of
``d_s`` around its mean over the S schedules estimates ``2 sigma_b^2 + mean(v_s)``, where
``sigma_b`` is the standard deviation of one training's FID around the schedule's
expectation. ``sigma_b^2 = max(0, (var(d) - mean(v)) / 2)``, with S - 1 degrees of freedom
(a chi-square interval on var(d); it assumes every schedule varies alike).

The pooled table: each schedule's FID is the mean over the two trainings, with variance
``sigma_b^2 / 2 + (se_A^2 + se_B^2) / 4``; at each T the lowest mean is marked ``*``,
schedules whose difference from it is not significant ``≈`` (t-test with S - 1 degrees of
freedom on that variance), the rest unmarked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import atomic_write_text
from maskgit_lab.sweeps.tables import fmt

LEVEL = 0.95


def read_cells(path: str | Path) -> pd.DataFrame:
    """Per (schedule, steps): mean FID over seeds, its squared standard error, seed count."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cells file {str(p)!r} not found (a schedule ablation's schedule_ablation_cells.csv)")
    df = pd.read_csv(p)
    missing = {"schedule", "steps", "seed", "fid"} - set(df.columns)
    if missing:
        raise ConfigError(f"{str(p)!r} is not a schedule ablation's cells file: no column(s) {', '.join(sorted(missing))}")
    if "mode" in df and set(df["mode"].dropna()) - {"train"}:
        raise ConfigError(f"{str(p)!r} holds a decode-mode ablation; compare per-schedule (train mode) trainings")
    if "reference_row" in df:
        df = df[df["reference_row"].isna()]
    df = df[df["schedule"].notna()]
    df = df.assign(steps=df["steps"].astype(int))
    g = df.groupby(["schedule", "steps"])["fid"]
    out = pd.DataFrame({"mean": g.mean(), "se2": g.var(ddof=1) / g.count(), "seeds": g.count()})
    if out.empty or (out["seeds"] < 2).any():
        raise ConfigError(f"{str(p)!r}: every cell needs at least 2 seeds")
    return out


def between_trainings(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-cell comparison, per-T estimate of sigma_b) of two ``read_cells`` frames."""
    if set(a.index) != set(b.index):
        only = sorted(set(a.index) ^ set(b.index))[:4]
        raise ConfigError(f"the two ablations must cover the same schedules and T; not in both: {only}")
    cells = a.reset_index().merge(b.reset_index(), on=["schedule", "steps"], suffixes=("_a", "_b"))
    cells["diff"] = cells["mean_b"] - cells["mean_a"]
    cells["v"] = cells["se2_a"] + cells["se2_b"]
    welch = (cells["diff"] / np.sqrt(cells["v"])).to_numpy()
    dof = cells["v"] ** 2 / (cells["se2_a"] ** 2 / (cells["seeds_a"] - 1) + cells["se2_b"] ** 2 / (cells["seeds_b"] - 1))
    cells["p"] = 2 * stats.t.sf(np.abs(welch), dof)
    rows = []
    for steps, c in cells.groupby("steps"):
        s = len(c)
        if s < 3:
            raise ConfigError(f"T={steps}: at least 3 schedules are needed to estimate the variation between trainings")
        var_d, v = float(c["diff"].var(ddof=1)), float(c["v"].mean())
        lo_q, hi_q = stats.chi2.ppf([1 - (1 - LEVEL) / 2, (1 - LEVEL) / 2], s - 1)
        bound = [np.sqrt(max(0.0, (var_d * (s - 1) / q - v) / 2)) for q in (lo_q, hi_q)]
        rows.append({"steps": steps, "schedules": s, "shift": float(c["diff"].mean()),
                     "sigma_b": np.sqrt(max(0.0, (var_d - v) / 2)), "sigma_b_lo": bound[0], "sigma_b_hi": bound[1],
                     "sampling_sd": np.sqrt(v / 2), "dof": s - 1})
    return cells, pd.DataFrame(rows).set_index("steps")


def pooled_table(cells: pd.DataFrame, sigma: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T: the mean over both trainings, its half-width including the
    variation between trainings, and the mark against the best at that T."""
    out = cells[["schedule", "steps"]].copy()
    out["mean"] = (cells["mean_a"] + cells["mean_b"]) / 2
    sb2 = cells["steps"].map(sigma["sigma_b"]) ** 2
    out["var"] = sb2 / 2 + cells["v"] / 4
    out["dof"] = cells["steps"].map(sigma["dof"])
    out["half"] = stats.t.ppf(0.5 + LEVEL / 2, out["dof"]) * np.sqrt(out["var"])
    marks = []
    for _, r in out.iterrows():
        same_t = out[out["steps"] == r["steps"]]
        best = same_t.loc[same_t["mean"].idxmin()]
        if r["schedule"] == best["schedule"]:
            marks.append(("*", float("nan")))
            continue
        t = (r["mean"] - best["mean"]) / np.sqrt(r["var"] + best["var"])
        p = float(2 * stats.t.sf(abs(t), r["dof"]))
        marks.append(("≈" if p >= 1 - LEVEL else "", p))
    out["mark"], out["p_vs_best"] = zip(*marks, strict=True)
    return out


def worst_test(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per T: the schedule with the highest pooled mean, the runner-up, and the p of their
    difference (same variance and degrees of freedom as the marks)."""
    rows = []
    for steps, same_t in pooled.groupby("steps"):
        worst, second = (same_t.loc[i] for i in same_t["mean"].nlargest(2).index)
        t = (worst["mean"] - second["mean"]) / np.sqrt(worst["var"] + second["var"])
        rows.append({"steps": steps, "worst": worst["schedule"], "runner_up": second["schedule"],
                     "diff": worst["mean"] - second["mean"], "p": float(2 * stats.t.sf(abs(t), worst["dof"]))})
    return pd.DataFrame(rows).set_index("steps")


def report(cells: pd.DataFrame, sigma: pd.DataFrame, pooled: pd.DataFrame, names: tuple[str, str]) -> str:
    a, b = names
    lines = [f"# Table 3 trained twice: {a} (A) and {b} (B)", "",
             "## Between-training variation, per T", "",
             f"sigma_b: the standard deviation of one training's FID around its schedule's expectation, from the "
             f"spread of the differences B - A across schedules around their mean (a shift shared by every "
             f"schedule changes no comparison), less their sampling variance; {LEVEL:.0%} chi-square interval. "
             f"A difference between two schedules trained once each carries sqrt(2) sigma_b of training variation; "
             f"the last column is the {LEVEL:.0%} margin that training alone can produce.", "",
             "| T | schedules | shared shift B - A | sigma_b | 95 % interval | sampling sd of a cell | margin for one training each |",
             "|---|---|---|---|---|---|---|"]
    for steps, r in sigma.iterrows():
        margin = stats.t.ppf(0.5 + LEVEL / 2, r["dof"]) * np.sqrt(2) * r["sigma_b"]
        lines.append(f"| {steps} | {int(r['schedules'])} | {r['shift']:+.2f} | {r['sigma_b']:.2f} | "
                     f"{r['sigma_b_lo']:.2f}–{r['sigma_b_hi']:.2f} | {r['sampling_sd']:.2f} | ± {margin:.1f} |")
    lines += ["", "## Per cell", "", "FID mean ± 95 % t half-width over seeds in each training; Welch's p of the difference.",
              "", "| schedule | T | A | B | B - A | p |", "|---|---|---|---|---|---|"]
    t_a = stats.t.ppf(0.5 + LEVEL / 2, cells["seeds_a"] - 1) * np.sqrt(cells["se2_a"])
    t_b = stats.t.ppf(0.5 + LEVEL / 2, cells["seeds_b"] - 1) * np.sqrt(cells["se2_b"])
    for i, r in cells.iterrows():
        lines.append(f"| {r['schedule']} | {r['steps']} | {r['mean_a']:.2f} ± {t_a[i]:.2f} | {r['mean_b']:.2f} ± "
                     f"{t_b[i]:.2f} | {r['diff']:+.2f} | {fmt(r['p'], 4)} |")
    steps = sorted(pooled["steps"].unique())
    lines += ["", "## Table 3 pooled over both trainings", "",
              "FID: the mean over the two trainings ± 95 % half-width that includes the variation between trainings "
              "(sigma_b of that T; t with S - 1 degrees of freedom). * = lowest mean at that T; ≈ = not significantly "
              "worse than it (two-sided t-test on the same variance, p >= 0.05); unmarked = significantly worse. "
              "It assumes every schedule's training varies alike.", "",
              "| schedule | " + " | ".join(f"FID T={t}" for t in steps) + " |", "|---|" + "---|" * len(steps)]
    for schedule in dict.fromkeys(pooled["schedule"]):
        row = pooled[pooled["schedule"] == schedule].set_index("steps")
        parts = [f"{row.loc[t, 'mean']:.2f} ± {row.loc[t, 'half']:.2f} {row.loc[t, 'mark']}".rstrip() for t in steps]
        lines.append(f"| {schedule} | " + " | ".join(parts) + " |")
    lines += ["", "Worst schedule at each T against the runner-up (same test):", ""]
    for steps, r in worst_test(pooled).iterrows():
        verdict = "significantly worse" if r["p"] < 1 - LEVEL else "not significantly worse"
        lines.append(f"- T = {steps}: {r['worst']} {r['diff']:+.2f} FID against {r['runner_up']}, p = {r['p']:.3f} "
                     f"({verdict})")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.trainings", description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the first training's schedule_ablation_cells.csv")
    parser.add_argument("b", help="the second training's schedule_ablation_cells.csv")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="labels of the two trainings (default: the paths)")
    parser.add_argument("--out", help="write the report here too (markdown, atomically)")
    args = parser.parse_args(argv)
    cells, sigma = between_trainings(read_cells(args.a), read_cells(args.b))
    text = report(cells, sigma, pooled_table(cells, sigma), tuple(args.names or (args.a, args.b)))
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
