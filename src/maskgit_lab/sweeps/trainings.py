"""Table 3 over several trainings: the recorded cells of every training, and the statistics
that put the variation between trainings into the table's intervals.

A training k is every schedule's transformer trained with ``transformer_train.seed = k`` on
the same tokenizer; each is sampled on the same seeds. The cells of finished trainings are
recorded in the table's results folder (``cells.csv``, with ``table.json`` naming the table
they belong to), so a table is built up in pieces and rebuilt without sampling.

Statistics, per T, on the S x k table of cell means (the mean over a cell's sample seeds):

- ``between_trainings``: the table split into a schedule effect, a shift shared by every
  schedule of one training (it changes no comparison) and a residual; the residual mean
  square, less a cell mean's sampling variance, estimates sigma_b^2, the variance of one
  training's FID around its schedule's expectation (chi-square interval, (S - 1)(k - 1) dof).
- ``pooled_table``: each schedule's mean over the trainings with variance
  sigma_b^2 / k + sum(se_r^2) / k^2 and marks by t-tests on that variance (every schedule
  assumed to vary alike).
- ``own_variation_table`` (k >= 3): each schedule's interval from its own variance between
  trainings, the shared shift removed (Shukla's stability variance, t with k - 1 dof), and
  marks by paired t-tests across trainings. No assumption that schedules vary alike; it is
  the headline table from three trainings on, and Levene's test says whether the assumption
  of the pooled table holds.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from maskgit_lab import stats as st
from maskgit_lab.decoding.schedules import SCHEDULES
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import atomic_write, atomic_write_text
from maskgit_lab.redact import reason

CELLS_FILE, TABLE_FILE = "cells.csv", "table.json"
METRICS = ("fid", "is", "precision", "recall", "kid", "class_consistency", "nll", "seconds_per_image")
RECORDED = ("checkpoint_sha", "tokenizer_sha", "git_commit", "sampling_precision", "machine", "date")
CELL_KEY = ["training", "schedule", "steps", "seed"]
REFERENCE_KEY = ["reference_row", "seed"]


# ---- the recorded cells


def read_record(out_dir: Path) -> tuple[dict | None, pd.DataFrame]:
    """(the table's recorded description, its recorded cells); (None, empty) when there are none."""
    out_dir = Path(out_dir)
    table, cells = out_dir / TABLE_FILE, out_dir / CELLS_FILE
    if not cells.exists() and not table.exists():
        return None, pd.DataFrame()
    if not (cells.is_file() and table.is_file()):
        have, lack = (CELLS_FILE, TABLE_FILE) if cells.exists() else (TABLE_FILE, CELLS_FILE)
        raise ConfigError(f"{out_dir} holds {have} without {lack}: not a recorded table over trainings")
    try:
        info = json.loads(table.read_text())
        df = pd.read_csv(cells)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"{out_dir}: its recorded cells cannot be read ({type(exc).__name__}: "
                          f"{reason(exc)})") from None
    if not isinstance(info, dict) or "table_id" not in info:
        raise ConfigError(f"{out_dir / TABLE_FILE} does not name its table (no table_id)")
    missing = {"table_id", "seed", "fid"} - set(df.columns)
    if missing or df.empty:
        raise ConfigError(f"{out_dir / CELLS_FILE} holds no cells" + (f" (no column {', '.join(sorted(missing))})"
                                                                       if missing else ""))
    ids = set(df["table_id"].astype(str))
    if ids != {info["table_id"]}:
        raise ConfigError(f"{out_dir / CELLS_FILE} mixes cells of several tables ({', '.join(sorted(ids))}); "
                          f"{TABLE_FILE} names {info['table_id']}")
    return info, df


def check_record(out_dir: Path, table_id: str) -> pd.DataFrame:
    """The recorded cells of table ``table_id`` in ``out_dir`` (empty when none): a folder
    holding another table's cells is a one-line error."""
    info, df = read_record(out_dir)
    if info is not None and info["table_id"] != table_id:
        raise ConfigError(f"{out_dir} holds the cells of table {info['table_id']}, made with other settings or "
                          f"another tokenizer than this one ({table_id}); choose another --out-dir")
    return df


@contextmanager
def _locked(out_dir: Path):
    """One writer of a results folder's record at a time (workers of one machine share it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".record.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record(out_dir: Path, info: dict, cells: pd.DataFrame) -> pd.DataFrame:
    """Add ``cells`` to the folder's record (cells already recorded are kept as they are) and
    write ``table.json``; -> every recorded cell."""
    out_dir = Path(out_dir)
    with _locked(out_dir):
        old = check_record(out_dir, info["table_id"])
        new = cells.assign(table_id=info["table_id"])
        both = pd.concat([old, new], ignore_index=True) if len(old) else new.reset_index(drop=True)
        both = normalize(both).assign(table_id=info["table_id"]).drop_duplicates(subset=_key(both), keep="first")
        both = both.sort_values(_key(both), na_position="first", kind="stable").reset_index(drop=True)
        atomic_write(out_dir / CELLS_FILE, lambda p: both.to_csv(p, index=False))
        atomic_write_text(out_dir / TABLE_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return both


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Cells as recorded: the key columns as whole numbers, the metrics as floats, the
    provenance as text (MLflow gives every param as text); other columns are left out."""
    df = df.copy()
    for c in ("training", "steps", "seed"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in METRICS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    keep = [c for c in ("reference_row", "training", "schedule", "steps", "seed", *METRICS, *RECORDED) if c in df]
    return df[keep]


def _key(df: pd.DataFrame) -> list[str]:
    return [c for c in ("reference_row", *CELL_KEY) if c in df]


# ---- statistics over trainings


def training_means(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (schedule, steps), one column triple per training r (in order): the mean FID over
    the cell's sample seeds (``mean_r``), its squared standard error (``se2_r``) and the seed
    count (``seeds_r``). Every training must hold every (schedule, T), each on >= 2 seeds."""
    g = cells.groupby(["training", "schedule", "steps"])["fid"]
    per = pd.DataFrame({"mean": g.mean(), "se2": g.var(ddof=1) / g.count(), "seeds": g.count()}).reset_index()
    if (per["seeds"] < 2).any():
        bad = per[per["seeds"] < 2].iloc[0]
        raise ConfigError(f"training {bad['training']}, {bad['schedule']} T={bad['steps']}: every cell needs at "
                          "least 2 sample seeds")
    trainings = sorted(int(k) for k in per["training"].unique())
    order = {s: i for i, s in enumerate(SCHEDULES)}
    keys = sorted(set(zip(per["schedule"], per["steps"].astype(int), strict=True)),
                  key=lambda key: (order.get(key[0], len(order)), key[0], key[1]))
    out = pd.DataFrame(keys, columns=["schedule", "steps"])
    for r, k in enumerate(trainings):
        mine = per[per["training"] == k].set_index(["schedule", "steps"])
        lacking = [key for key in keys if key not in mine.index]
        if lacking:
            raise ConfigError(f"training {k} lacks {lacking[0][0]} at T={lacking[0][1]}: every training must "
                              "cover the same schedules and T")
        for col in ("mean", "se2", "seeds"):
            out[f"{col}_{r}"] = [mine.loc[key, col] for key in keys]
    out.attrs["trainings"] = trainings
    return out


def _columns(means: pd.DataFrame, what: str) -> np.ndarray:
    """The [cells, k] matrix of one per-training column family (``mean``, ``se2``, ``seeds``)."""
    k = sum(c.startswith("mean_") for c in means.columns)
    return means[[f"{what}_{r}" for r in range(k)]].to_numpy(dtype=float)


def between_trainings(means: pd.DataFrame) -> pd.DataFrame:
    """Per T: sigma_b with its interval, the shared shift of each training against the first,
    a cell mean's sampling sd and the degrees of freedom."""
    m_all, se2_all = _columns(means, "mean"), _columns(means, "se2")
    k = m_all.shape[1]
    if k < 2:
        raise ConfigError(f"the variation between trainings needs at least 2 trainings, got {k}")
    rows = []
    for steps, c in means.groupby("steps"):
        s = len(c)
        if s < 3:
            raise ConfigError(f"T={steps}: at least 3 schedules are needed to estimate the variation between trainings")
        m = m_all[c.index]
        dof = (s - 1) * (k - 1)
        ms, v = float((st.double_centre(m) ** 2).sum() / dof), float(se2_all[c.index].mean())
        sd, lo, hi = st.sd_interval(ms, dof, subtract=v)
        shifts = m.mean(axis=0) - m[:, 0].mean()
        rows.append({"steps": int(steps), "schedules": s, "shifts": [float(x) for x in shifts[1:]], "sigma_b": sd,
                     "sigma_b_lo": lo, "sigma_b_hi": hi, "sampling_sd": float(np.sqrt(v)), "dof": dof})
    return pd.DataFrame(rows).set_index("steps")


def _marked(out: pd.DataFrame, p_of) -> pd.DataFrame:
    """``mark`` and ``p_vs_best`` per row against the lowest mean at its T."""
    out["mark"], out["p_vs_best"] = "", np.nan
    for _, c in out.groupby("steps"):
        means = {i: out.at[i, "mean"] for i in c.index}
        _, mark, p = st.marks(means, lambda i, b: p_of(out.loc[i], out.loc[b]))
        for i in c.index:
            out.at[i, "mark"], out.at[i, "p_vs_best"] = mark[i], p[i]
    return out


def pooled_table(means: pd.DataFrame, sigma: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T: the mean over the trainings, its half-width with sigma_b in it, and
    the mark against the best at that T (t-test on the same variance, (S - 1)(k - 1) dof)."""
    m, se2 = _columns(means, "mean"), _columns(means, "se2")
    k = m.shape[1]
    out = means[["schedule", "steps"]].copy()
    out["mean"] = m.mean(axis=1)
    out["var"] = out["steps"].map(sigma["sigma_b"]) ** 2 / k + se2.sum(axis=1) / k ** 2
    out["dof"] = out["steps"].map(sigma["dof"])
    out["half"] = st.t_quantile(out["dof"]) * np.sqrt(out["var"])
    return _marked(out, lambda a, b: st.diff_p(a["mean"], a["var"], b["mean"], b["var"], a["dof"]))


def own_sd(means: pd.DataFrame) -> np.ndarray:
    """Per (schedule, T): the schedule's own sd between trainings with each training's shared
    shift removed (the square root of its stability variance, floored at its cell means' own
    sampling variance, which the cell means carry)."""
    m, se2 = _columns(means, "mean"), _columns(means, "se2")
    sd = np.full(len(means), np.nan)
    for _, c in means.groupby("steps"):
        if len(c) < 3:
            raise ConfigError("at least 3 schedules are needed to split the variation by schedule")
        sd[c.index] = np.sqrt(np.maximum(st.stability_variances(m[c.index]), se2[c.index].mean(axis=1)))
    return sd


def own_variation_table(means: pd.DataFrame) -> pd.DataFrame:
    """Per schedule and T, without assuming that schedules vary alike: the mean over the k
    trainings ± t (k - 1 dof) * sd / sqrt(k), sd from ``own_sd``, and the mark by a paired
    t-test across trainings against the best at that T."""
    m = _columns(means, "mean")
    k = m.shape[1]
    if k < 3:
        raise ConfigError(f"a schedule's own variation needs at least 3 trainings, got {k}")
    out = means[["schedule", "steps"]].copy()
    out["per_training"], out["mean"], out["sd"] = list(m), m.mean(axis=1), own_sd(means)
    out["half"] = st.t_quantile(k - 1) * out["sd"] / np.sqrt(k)
    return _marked(out, lambda a, b: st.paired_p(a["per_training"], b["per_training"]))


def equal_variation_p(means: pd.DataFrame) -> dict[int, float]:
    """Per T: Levene's p that every schedule's FID varies alike between trainings (on the cell
    means less each training's shared shift)."""
    m_all = _columns(means, "mean")
    return {int(t): st.levene_p(m_all[c.index] - m_all[c.index].mean(axis=0)) for t, c in means.groupby("steps")}


def worst_test(table: pd.DataFrame, p_of) -> pd.DataFrame:
    """Per T: the schedule with the highest mean, the runner-up, and the p of their difference."""
    rows = []
    for steps, same_t in table.groupby("steps"):
        worst, second = (same_t.loc[i] for i in same_t["mean"].nlargest(2).index)
        rows.append({"steps": int(steps), "worst": worst["schedule"], "runner_up": second["schedule"],
                     "diff": worst["mean"] - second["mean"], "p": p_of(worst, second)})
    return pd.DataFrame(rows).set_index("steps")


def steps_contrasts(means: pd.DataFrame) -> pd.DataFrame:
    """Per schedule, between consecutive T: the change of FID within each training's model, its
    mean over the trainings with a t interval (k - 1 dof) and the one-sample t-test's p."""
    rows = []
    for schedule, c in means.groupby("schedule", sort=False):
        c = c.sort_values("steps")
        m = _columns(c, "mean")
        k = m.shape[1]
        for i in range(len(c) - 1):
            d = m[i + 1] - m[i]
            rows.append({"schedule": schedule, "from": int(c["steps"].iloc[i]), "to": int(c["steps"].iloc[i + 1]),
                         "per_training": [float(x) for x in d], "mean": float(d.mean()),
                         "half": float(st.t_quantile(k - 1) * d.std(ddof=1) / np.sqrt(k)),
                         "p": st.one_sample_p(d)})
    return pd.DataFrame(rows)


def headline(means: pd.DataFrame, sigma: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(the table the results lead with, how its intervals are made): each schedule's own
    variation from three trainings on, the common sigma_b with two."""
    k = sum(c.startswith("mean_") for c in means.columns)
    if k >= 3:
        return own_variation_table(means), "own"
    return pooled_table(means, sigma).assign(sd=own_sd(means)), "common"
