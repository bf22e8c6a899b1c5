"""Two training recipes of the same schedules, each trained several times: does one recipe's
FID vary less from one training to the next, and where does it put the FID?

    python -m maskgit_lab.sweeps.recipes --a A1/schedule_ablation_cells.csv A2/... \\
        --b B1/schedule_ablation_cells.csv B2/... [--label-a "paper recipe"] \\
        [--label-b "blank share 0.1"] [--target 2] [--out results/fmnist/recipes.md]

Each input is one training's per-cell file of a per-schedule (``train`` mode) schedule
ablation, as for ``python -m maskgit_lab.sweeps.trainings``; a recipe is a list of such
trainings (another training seed each). The comparison covers the (schedule, T) cells that
every file holds.

Per cell, each training gives one number: its FID averaged over the cell's sample seeds.
Per recipe: the mean of those over the trainings and their standard deviation ``sd`` (with a
chi-square 95 % interval), which holds the variation between trainings plus the sampling
noise of a training's mean (shown apart: ``sampling``). Between the recipes:

- spread: the ratio sd_b / sd_a with its 95 % interval from the F distribution, the F-test's
  two-sided p and, since the F-test trusts normality (a schedule whose trainings fall into
  two modes is not normal), the Brown-Forsythe test's p (Levene's, median-centred);
- level: the difference of the means (b - a) with a Welch 95 % interval and p;
- the trainings each recipe would need for a row whose 95 % t half-width is at most
  ``--target`` FID points (Table 3's resolution target), from its sd.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import publish_report
from maskgit_lab.sweeps.tables import fmt
from maskgit_lab.sweeps.trainings import LEVEL, read_cells


def training_means(paths: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-cell FID means, their squared standard errors): one column per training."""
    frames = [read_cells(p) for p in paths]
    return (pd.concat([f["mean"] for f in frames], axis=1, keys=range(len(frames))),
            pd.concat([f["se2"] for f in frames], axis=1, keys=range(len(frames))))


def sd_interval(sd: float, k: int) -> tuple[float, float]:
    """95 % chi-square interval of a normal standard deviation estimated from k values."""
    a = (1 - LEVEL) / 2
    return sd * np.sqrt((k - 1) / stats.chi2.ppf(1 - a, k - 1)), sd * np.sqrt((k - 1) / stats.chi2.ppf(a, k - 1))


def trainings_needed(sd: float, target: float, cap: int = 10_000) -> int:
    """The fewest trainings k >= 2 whose mean has a 95 % t half-width t(k - 1) * sd / sqrt(k)
    of at most ``target`` (``cap`` + 1 when even ``cap`` is not enough)."""
    for k in range(2, cap + 1):
        if stats.t.ppf(0.5 + LEVEL / 2, k - 1) * sd / np.sqrt(k) <= target:
            return k
    return cap + 1


def compare(a: pd.DataFrame, b: pd.DataFrame, se2_a: pd.DataFrame, se2_b: pd.DataFrame,
            target: float = 2.0) -> pd.DataFrame:
    """One row per (schedule, T) that both recipes hold: see the module's docstring."""
    common = a.dropna().index.intersection(b.dropna().index)
    if common.empty:
        raise ConfigError("the two recipes' cells files share no (schedule, T) cell")
    ka, kb = a.shape[1], b.shape[1]
    if min(ka, kb) < 2:
        raise ConfigError(f"each recipe needs at least 2 trainings, got {ka} and {kb}")
    rows = []
    for key in common:
        xa, xb = a.loc[key].to_numpy(float), b.loc[key].to_numpy(float)
        va, vb = xa.var(ddof=1), xb.var(ddof=1)
        sa, sb = np.sqrt(va), np.sqrt(vb)
        f = vb / va if va > 0 else np.inf
        p_f = float(min(1.0, 2 * min(stats.f.cdf(f, kb - 1, ka - 1), stats.f.sf(f, kb - 1, ka - 1))))
        lo_f, hi_f = (f / stats.f.ppf(1 - x, kb - 1, ka - 1) for x in ((1 - LEVEL) / 2, (1 + LEVEL) / 2))
        se2 = va / ka + vb / kb
        dof = se2 ** 2 / ((va / ka) ** 2 / (ka - 1) + (vb / kb) ** 2 / (kb - 1)) if se2 > 0 else ka + kb - 2
        q = stats.t.ppf(0.5 + LEVEL / 2, dof)
        diff = xb.mean() - xa.mean()
        rows.append({
            "schedule": key[0], "steps": key[1], "k_a": ka, "k_b": kb,
            "per_training_a": xa, "per_training_b": xb,
            "mean_a": xa.mean(), "mean_b": xb.mean(),
            "sd_a": sa, "sd_b": sb, "sd_a_ci": sd_interval(sa, ka), "sd_b_ci": sd_interval(sb, kb),
            "sampling_a": float(np.sqrt(se2_a.loc[key].mean())), "sampling_b": float(np.sqrt(se2_b.loc[key].mean())),
            "ratio": np.sqrt(f), "ratio_ci": (np.sqrt(lo_f), np.sqrt(hi_f)), "p_f": p_f,
            "p_bf": float(stats.levene(xa, xb, center="median").pvalue),
            "diff": diff, "diff_half": q * np.sqrt(se2),
            "p_diff": float(2 * stats.t.sf(abs(diff) / np.sqrt(se2), dof)) if se2 > 0 else float(diff == 0),
            "needed_a": trainings_needed(sa, target), "needed_b": trainings_needed(sb, target),
        })
    return pd.DataFrame(rows)


def report(table: pd.DataFrame, label_a: str, label_b: str, names_a: list[str], names_b: list[str],
           target: float) -> str:
    ka, kb = int(table["k_a"].iloc[0]), int(table["k_b"].iloc[0])
    lines = [f"# Two training recipes: {label_a} (a, {ka} trainings) against {label_b} (b, {kb} trainings)", "",
             f"a: {', '.join(names_a)}", "", f"b: {', '.join(names_b)}", "",
             "Per cell, each training's FID is its mean over the cell's sample seeds. sd: the standard deviation "
             "of those over a recipe's trainings (95 % chi-square interval), holding the variation between "
             "trainings and the sampling noise of a training's mean (sampling: that noise alone, the root mean "
             "squared standard error). Spread: sd_b / sd_a with its 95 % F interval, the F-test's p and the "
             "Brown-Forsythe test's p (no normality assumed). Level: mean_b - mean_a ± Welch 95 % half-width, "
             f"its p. Needed: the trainings a recipe needs for a row's 95 % t half-width ≤ {target:g} FID.", "",
             "| schedule | T | a per training | b per training | mean a | mean b | b - a ± 95 % (p) | sd a [95 %] "
             "| sd b [95 %] | sampling a / b | sd b / sd a [95 %] | p (F) | p (B-F) | needed a / b |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        each = ["; ".join(f"{x:.1f}" for x in r[c]) for c in ("per_training_a", "per_training_b")]
        ci = [f"{r[c]:.2f} [{r[c + '_ci'][0]:.2f}, {r[c + '_ci'][1]:.2f}]" for c in ("sd_a", "sd_b")]
        lines.append(
            f"| {r['schedule']} | {r['steps']} | {each[0]} | {each[1]} | {r['mean_a']:.2f} | {r['mean_b']:.2f} | "
            f"{r['diff']:+.2f} ± {r['diff_half']:.2f} ({fmt(r['p_diff'], 3)}) | {ci[0]} | {ci[1]} | "
            f"{r['sampling_a']:.2f} / {r['sampling_b']:.2f} | {r['ratio']:.2f} [{r['ratio_ci'][0]:.2f}, "
            f"{r['ratio_ci'][1]:.2f}] | {fmt(r['p_f'], 3)} | {fmt(r['p_bf'], 3)} | {r['needed_a']} / {r['needed_b']} |")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.recipes", description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", required=True, help="recipe a: each training's schedule_ablation_cells.csv")
    parser.add_argument("--b", nargs="+", required=True, help="recipe b: each training's schedule_ablation_cells.csv")
    parser.add_argument("--label-a", default="recipe a")
    parser.add_argument("--label-b", default="recipe b")
    parser.add_argument("--names-a", nargs="+", help="labels of recipe a's trainings (default: the paths)")
    parser.add_argument("--names-b", nargs="+", help="labels of recipe b's trainings (default: the paths)")
    parser.add_argument("--target", type=float, default=2.0, help="95 %% half-width a row should reach (FID)")
    parser.add_argument("--out", help="write the report here too (markdown, atomically)")
    args = parser.parse_args(argv)
    for side in ("a", "b"):
        files, names = getattr(args, side), getattr(args, f"names_{side}")
        if len(files) < 2:
            raise ConfigError(f"--{side} needs at least two trainings' cells files, got {len(files)}")
        if names and len(names) != len(files):
            raise ConfigError(f"--names-{side} gives {len(names)} labels for {len(files)} files")
    if not args.target > 0:
        raise ConfigError(f"--target must be a positive number of FID points, got {args.target}")
    if args.out and Path(args.out).suffix != ".md":
        raise ConfigError(f"--out {args.out!r} must end in .md (the report is markdown)")
    a, se2_a = training_means(args.a)
    b, se2_b = training_means(args.b)
    table = compare(a, b, se2_a, se2_b, args.target)
    text = report(table, args.label_a, args.label_b, list(args.names_a or args.a), list(args.names_b or args.b),
                  args.target)
    publish_report(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
