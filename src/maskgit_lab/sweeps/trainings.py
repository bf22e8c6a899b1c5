"""Several trainings of the same Table 3, side by side: how far the table moves when its
models are trained again, and the table pooled over them with that variation in its intervals.

    python -m maskgit_lab.sweeps.trainings A/schedule_ablation_cells.csv B/schedule_ablation_cells.csv \\
        [C/...] [--names A B ...] [--out results/fmnist/between_trainings.md]

Each input is the per-cell file of a per-schedule (``train`` mode) schedule ablation: the
same schedules and T, the models trained k >= 2 times (another seed, machine or commit).
One training whose schedules were run as separate ablations (same training seed and
config, different ``sweep.schedules``) is given as its files joined by commas,
``A1/schedule_ablation_cells.csv,A2/schedule_ablation_cells.csv``; its parts must not hold
the same schedule and T twice.
Table 3's own intervals cover sampling only (the seeds); a schedule's model is trained once.
This estimates what they leave out.

Per T, the S x k table of cell means is split into a schedule effect, a shift shared by
every schedule of one training (a machine, a library: it changes no comparison) and a
residual. The residual mean square, with (S - 1)(k - 1) degrees of freedom, estimates
``sigma_b^2`` — the variance of one training's FID around its schedule's expectation —
plus a cell mean's sampling variance, which is subtracted (a chi-square interval; it
assumes every schedule varies alike).

The pooled table: each schedule's FID is the mean over the k trainings, with variance
``sigma_b^2 / k + sum(se_r^2) / k^2``; at each T the lowest mean is marked ``*``, schedules
whose difference from it is not significant ``≈`` (t-test with the degrees of freedom of
``sigma_b``), the rest unmarked.

That table assumes every schedule's training varies alike. With three or more trainings the
report adds a second pooled table that does not: each schedule's row is the mean over the
trainings with a t interval (k - 1 degrees of freedom) from that schedule's own variance
between trainings, the shared shift removed (Shukla's stability variance, whose mean over the
schedules is sigma_b^2's residual mean square), and its mark comes from a paired t-test across
trainings against the best. Levene's test (median-centred) says per T whether the assumption
holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import publish_report
from maskgit_lab.sweeps.common import paired_p
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


def read_training(spec: str | Path) -> pd.DataFrame:
    """One training's ``read_cells`` frame from its file, or from several files joined by
    commas (one training seed whose schedules were run as separate ablations)."""
    parts = [x for x in str(spec).split(",") if x]
    if not parts:
        raise ConfigError(f"empty cells file list {str(spec)!r}")
    frames = [read_cells(x) for x in parts]
    seen: dict[tuple, str] = {}
    for part, frame in zip(parts, frames, strict=True):
        for key in frame.index:
            if key in seen:
                raise ConfigError(f"{seen[key]!r} and {part!r} both hold {key[0]} at T={key[1]}: "
                                  "the files of one training must hold different schedules")
            seen[key] = part
    return pd.concat(frames).sort_index()


def _quantile(dof) -> np.ndarray | float:
    """Two-sided Student-t quantile at LEVEL."""
    return stats.t.ppf(0.5 + LEVEL / 2, dof)


def _per_training(cells: pd.DataFrame, what: str) -> np.ndarray:
    """The [cells, k] matrix of one per-training column family (``mean``, ``se2``, ``seeds``)."""
    k = sum(c.startswith("mean_") for c in cells.columns)
    return cells[[f"{what}_{r}" for r in range(k)]].to_numpy()


def double_centre(m: np.ndarray) -> np.ndarray:
    """An S x k table less its row means and column means, plus the grand mean: the residual
    of the two-way (schedule + training) split."""
    return m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()


def _diff_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided p of the difference of two pooled rows (their variances, their dof)."""
    t = (a["mean"] - b["mean"]) / np.sqrt(a["var"] + b["var"])
    return float(2 * stats.t.sf(abs(t), a["dof"]))


def welch_anova_p(means: np.ndarray, se2: np.ndarray, n: np.ndarray) -> float:
    """Welch's heteroscedastic one-way ANOVA from group means, squared standard errors and
    sizes (for two groups: Welch's t-test)."""
    k, w = len(means), 1 / se2
    mw = float((w * means).sum() / w.sum())
    h = float((((1 - w / w.sum()) ** 2) / (n - 1)).sum())
    f = float((w * (means - mw) ** 2).sum() / (k - 1)) / (1 + 2 * (k - 2) / (k * k - 1) * h)
    return float(stats.f.sf(f, k - 1, (k * k - 1) / (3 * h)))


def between_trainings(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-cell comparison, per-T estimate of sigma_b) of k >= 2 ``read_cells`` frames.

    Per T, the S x k table of cell means is split as schedule + training + residual; the
    residual mean square, with (S - 1)(k - 1) degrees of freedom, estimates sigma_b^2 plus a
    cell mean's sampling variance (for k = 2: half the variance of the differences)."""
    if len(frames) < 2:
        raise ConfigError("give at least two trainings' cells files")
    index = set(frames[0].index)
    for f in frames[1:]:
        if set(f.index) != index:
            only = sorted(index ^ set(f.index))[:4]
            raise ConfigError(f"the ablations must cover the same schedules and T; not in all: {only}")
    keys = sorted(index)
    mean = np.array([[f.loc[key, "mean"] for f in frames] for key in keys])
    se2 = np.array([[f.loc[key, "se2"] for f in frames] for key in keys])
    seeds = np.array([[f.loc[key, "seeds"] for f in frames] for key in keys])
    cells = pd.DataFrame(keys, columns=["schedule", "steps"])
    for r in range(len(frames)):
        cells[f"mean_{r}"], cells[f"se2_{r}"], cells[f"seeds_{r}"] = mean[:, r], se2[:, r], seeds[:, r]
    cells["p"] = [welch_anova_p(mean[i], se2[i], seeds[i]) for i in range(len(keys))]
    k, rows = len(frames), []
    for steps, c in cells.groupby("steps"):
        s = len(c)
        if s < 3:
            raise ConfigError(f"T={steps}: at least 3 schedules are needed to estimate the variation between trainings")
        m = mean[c.index]
        resid = double_centre(m)
        dof = (s - 1) * (k - 1)
        ms, v = float((resid ** 2).sum() / dof), float(se2[c.index].mean())
        lo_q, hi_q = stats.chi2.ppf([1 - (1 - LEVEL) / 2, (1 - LEVEL) / 2], dof)
        shifts = m.mean(axis=0) - m[:, 0].mean()
        rows.append({"steps": steps, "schedules": s, "shift": ", ".join(f"{x:+.2f}" for x in shifts[1:]),
                     "sigma_b": np.sqrt(max(0.0, ms - v)), "sigma_b_lo": np.sqrt(max(0.0, ms * dof / lo_q - v)),
                     "sigma_b_hi": np.sqrt(max(0.0, ms * dof / hi_q - v)), "sampling_sd": np.sqrt(v), "dof": dof})
    return cells, pd.DataFrame(rows).set_index("steps")


def _paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided p of the paired t-test across trainings of two own-variation rows."""
    return paired_p(a["per_training"], b["per_training"])


def _mark_against_best(out: pd.DataFrame, p_of) -> pd.DataFrame:
    """Columns ``mark`` (* lowest mean at its T, ≈ not significantly worse, '' worse) and
    ``p_vs_best``, with ``p_of(row, best_row)`` the two-sided p of their difference."""
    best = out.loc[out.groupby("steps")["mean"].idxmin()].set_index("steps")
    marks = []
    for _, r in out.iterrows():
        b = best.loc[r["steps"]]
        if r["schedule"] == b["schedule"]:
            marks.append(("*", float("nan")))
            continue
        p = p_of(r, b)
        marks.append(("≈" if p >= 1 - LEVEL else "", p))
    out["mark"], out["p_vs_best"] = zip(*marks, strict=True)
    return out


def pooled_table(cells: pd.DataFrame, sigma: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T: the mean over the trainings, its half-width including the
    variation between trainings, and the mark against the best at that T."""
    means, se2 = _per_training(cells, "mean"), _per_training(cells, "se2")
    k = means.shape[1]
    out = cells[["schedule", "steps"]].copy()
    out["mean"] = means.mean(axis=1)
    out["var"] = cells["steps"].map(sigma["sigma_b"]) ** 2 / k + se2.sum(axis=1) / k ** 2
    out["dof"] = cells["steps"].map(sigma["dof"])
    out["half"] = _quantile(out["dof"]) * np.sqrt(out["var"])
    return _mark_against_best(out, _diff_p)


def stability_variances(m: np.ndarray) -> np.ndarray:
    """Per row of an S x k table (schedules x trainings) of cell means: an unbiased estimate
    of that schedule's own variance between trainings, the training's shared shift removed
    (Shukla's stability variance). From the double-centred residuals e:
    q_i = sum_r e_ir^2 / (k - 1) and sigma_i^2 = S / (S - 2) * (q_i - sum(q) / (S (S - 1))).
    Their mean is the residual mean square of ``between_trainings``; a value may fall below 0."""
    s, k = m.shape
    if s < 3:
        raise ConfigError(f"at least 3 schedules are needed to split the variation by schedule, got {s}")
    q = (double_centre(m) ** 2).sum(axis=1) / (k - 1)
    return s / (s - 2) * (q - q.sum() / (s * (s - 1)))


def own_variation_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T, without assuming that schedules vary alike: the mean over the k
    trainings ± t (k - 1 dof) * sqrt(sigma_i^2 / k), sigma_i^2 the schedule's stability
    variance (its cell means hold the sampling noise too; it is floored at the cell means'
    own sampling variance), and the mark against the best at that T by a paired t-test
    across trainings (each training's shared shift cancels)."""
    means, se2 = _per_training(cells, "mean"), _per_training(cells, "se2")
    k = means.shape[1]
    if k < 3:
        raise ConfigError(f"a schedule's own variation needs at least 3 trainings, got {k}")
    out = cells[["schedule", "steps"]].copy()
    out["per_training"], out["mean"], out["sd"] = list(means), means.mean(axis=1), np.nan
    for _, c in cells.groupby("steps"):
        var = np.maximum(stability_variances(means[c.index]), se2[c.index].mean(axis=1))
        out.loc[c.index, "sd"] = np.sqrt(var)
    out["half"] = _quantile(k - 1) * out["sd"] / np.sqrt(k)
    return _mark_against_best(out, _paired_p)


def equal_variation_test(cells: pd.DataFrame) -> pd.Series:
    """Per T: the p of Levene's test (median-centred, Brown-Forsythe) that every schedule's
    FID varies alike between trainings, on the cell means less each training's shared shift."""
    out = {}
    for steps, c in cells.groupby("steps"):
        m = _per_training(c, "mean")
        out[steps] = float(stats.levene(*(m - m.mean(axis=0)), center="median").pvalue)
    return pd.Series(out, name="levene_p")


def worst_test(pooled: pd.DataFrame, p_of=_diff_p) -> pd.DataFrame:
    """Per T: the schedule with the highest pooled mean, the runner-up, and the p of their
    difference (by default the pooled table's test; ``_paired_p`` for the own-variation table)."""
    rows = []
    for steps, same_t in pooled.groupby("steps"):
        worst, second = (same_t.loc[i] for i in same_t["mean"].nlargest(2).index)
        rows.append({"steps": steps, "worst": worst["schedule"], "runner_up": second["schedule"],
                     "diff": worst["mean"] - second["mean"], "p": p_of(worst, second)})
    return pd.DataFrame(rows).set_index("steps")


def steps_contrasts(cells: pd.DataFrame) -> pd.DataFrame:
    """Per schedule, between consecutive T: the change of FID within each training's model
    (where that training's own effect largely cancels), its mean over the k trainings with a
    95 % t interval (k - 1 degrees of freedom) and the one-sample t-test's p."""
    rows = []
    for schedule, c in cells.groupby("schedule", sort=False):
        c = c.sort_values("steps")
        m = _per_training(c, "mean")
        k = m.shape[1]
        for i in range(len(c) - 1):
            d = m[i + 1] - m[i]
            sd = float(d.std(ddof=1))
            rows.append({"schedule": schedule, "from": int(c["steps"].iloc[i]), "to": int(c["steps"].iloc[i + 1]),
                         "per_training": d, "mean": float(d.mean()),
                         "half": float(_quantile(k - 1) * sd / np.sqrt(k)),
                         "p": float(stats.ttest_1samp(d, 0).pvalue) if sd > 0 else float("nan")})
    return pd.DataFrame(rows)


def _table_lines(table: pd.DataFrame, sd: bool = False) -> list[str]:
    """Markdown rows 'mean ± half mark' per schedule and T (with the sd over trainings if asked)."""
    steps = sorted(table["steps"].unique())
    lines = ["| schedule | " + " | ".join(f"FID T={t}" for t in steps) + " |", "|---|" + "---|" * len(steps)]
    for schedule in dict.fromkeys(table["schedule"]):
        row = table[table["schedule"] == schedule].set_index("steps")
        parts = [(f"{row.loc[t, 'mean']:.2f} ± {row.loc[t, 'half']:.2f}" + (f" (sd {row.loc[t, 'sd']:.1f})" if sd else "")
                  + f" {row.loc[t, 'mark']}").rstrip() for t in steps]
        lines.append(f"| {schedule} | " + " | ".join(parts) + " |")
    return lines


def _worst_lines(worst: pd.DataFrame) -> list[str]:
    return [f"- T = {steps}: {r['worst']} {r['diff']:+.2f} FID against {r['runner_up']}, p = {r['p']:.3f} "
            f"({'significantly worse' if r['p'] < 1 - LEVEL else 'not significantly worse'})"
            for steps, r in worst.iterrows()]


def report(cells: pd.DataFrame, sigma: pd.DataFrame, pooled: pd.DataFrame, names: list[str]) -> str:
    k = len(names)
    tags = [chr(ord("A") + r) for r in range(k)]
    others = ", ".join(f"{t} - A" for t in tags[1:])
    lines = [f"# Table 3 trained {k} times: " + ", ".join(f"{n} ({t})" for n, t in zip(names, tags, strict=True)), "",
             "## Between-training variation, per T", "",
             "sigma_b: the standard deviation of one training's FID around its schedule's expectation. The table of "
             "cell means (schedules x trainings) at each T is split into a schedule effect, a shift shared by every "
             "schedule of a training (it changes no comparison) and a residual; the residual mean square, less a cell "
             f"mean's sampling variance, estimates sigma_b^2 ({LEVEL:.0%} chi-square interval, (S - 1)(k - 1) degrees "
             "of freedom). A difference between two schedules trained once each carries sqrt(2) sigma_b of training "
             f"variation; the last column is the {LEVEL:.0%} margin that training alone can produce.", "",
             f"| T | schedules | df | shared shift {others} | sigma_b | 95 % interval | sampling sd of a cell mean "
             "| margin for one training each |", "|---|---|---|---|---|---|---|---|"]
    for steps, r in sigma.iterrows():
        margin = _quantile(r["dof"]) * np.sqrt(2) * r["sigma_b"]
        lines.append(f"| {steps} | {int(r['schedules'])} | {int(r['dof'])} | {r['shift']} | {r['sigma_b']:.2f} | "
                     f"{r['sigma_b_lo']:.2f}–{r['sigma_b_hi']:.2f} | {r['sampling_sd']:.2f} | ± {margin:.1f} |")
    spread = "B - A" if k == 2 else "max - min"
    lines += ["", "## Per cell", "", "FID mean ± 95 % t half-width over seeds in each training; p: Welch's "
              "heteroscedastic ANOVA of the trainings (for two: Welch's t-test).", "",
              f"| schedule | T | {' | '.join(tags)} | {spread} | p |", "|---|---|" + "---|" * (k + 2)]
    for _, r in cells.iterrows():
        m = [r[f"mean_{i}"] for i in range(k)]
        half = [_quantile(r[f"seeds_{i}"] - 1) * np.sqrt(r[f"se2_{i}"]) for i in range(k)]
        d = f"{m[1] - m[0]:+.2f}" if k == 2 else f"{max(m) - min(m):.2f}"
        lines.append(f"| {r['schedule']} | {r['steps']} | " + " | ".join(f"{a:.2f} ± {h:.2f}" for a, h in zip(m, half, strict=True))
                     + f" | {d} | {fmt(r['p'], 4)} |")
    lines += ["", f"## Table 3 pooled over the {k} trainings", "",
              f"FID: the mean over the {k} trainings ± 95 % half-width that includes the variation between trainings "
              "(sigma_b of that T; t with (S - 1)(k - 1) degrees of freedom). * = lowest mean at that T; ≈ = not "
              "significantly worse than it (two-sided t-test on the same variance, p >= 0.05); unmarked = "
              "significantly worse. It assumes every schedule's training varies alike.", "",
              *_table_lines(pooled), "", "Worst schedule at each T against the runner-up (same test):", "",
              *_worst_lines(worst_test(pooled))]
    if k >= 3:
        own, levene = own_variation_table(cells), equal_variation_test(cells)
        lines += ["", f"## Table 3 pooled over the {k} trainings, each schedule with its own variation", "",
                  f"FID: the mean over the {k} trainings ± 95 % t half-width ({k - 1} degrees of freedom) from that "
                  "schedule's own variance between trainings with each training's shared shift removed (Shukla's "
                  "stability variance; sd is its square root; the cell means carry their seeds' noise, so sampling "
                  "is in it too; their mean over schedules is sigma_b^2 plus that noise). * = lowest mean at that T; ≈ = not significantly worse than it (paired "
                  "t-test across trainings, two-sided, p >= 0.05: each training's shared shift cancels); unmarked = "
                  "significantly worse. No assumption that schedules vary alike; Levene's test of that assumption "
                  "(median-centred, on the cell means less each training's shared shift): "
                  + ", ".join(f"T = {t}: p = {fmt(p, 4)}" for t, p in levene.items())
                  + ". Where it is rejected, this table is the one to read.", "",
                  *_table_lines(own, sd=True), "", "Worst schedule at each T against the runner-up (paired test):", "",
                  *_worst_lines(worst_test(own, _paired_p))]
    if k >= 3:
        lines += ["", "## FID from one T to the next, within each training's model", "",
                  f"Per training, the change of the schedule's FID (the same model at both T); mean ± 95 % t half-width "
                  f"over the {k} trainings ({k - 1} degrees of freedom) and the one-sample t-test's p.", "",
                  "| schedule | T | per training | mean ± 95 % | p |", "|---|---|---|---|---|"]
        for _, r in steps_contrasts(cells).iterrows():
            each = ", ".join(f"{x:+.1f}" for x in r["per_training"])
            lines.append(f"| {r['schedule']} | {r['from']} → {r['to']} | {each} | {r['mean']:+.2f} ± {r['half']:.2f} | "
                         f"{fmt(r['p'], 3)} |")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.sweeps.trainings", description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="+", help="each training's schedule_ablation_cells.csv (two or more); "
                        "one training run as several ablations: its files joined by commas")
    parser.add_argument("--names", nargs="+", help="labels of the trainings, one per file (default: the paths)")
    parser.add_argument("--out", help="write the report here too (markdown, atomically)")
    args = parser.parse_args(argv)
    if len(args.cells) < 2:
        raise ConfigError(f"give at least two trainings' cells files, got {len(args.cells)}")
    if args.names and len(args.names) != len(args.cells):
        raise ConfigError(f"--names gives {len(args.names)} labels for {len(args.cells)} files")
    cells, sigma = between_trainings([read_training(c) for c in args.cells])
    text = report(cells, sigma, pooled_table(cells, sigma), list(args.names or args.cells))
    publish_report(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
