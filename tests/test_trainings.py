"""Table 3 over several trainings (``maskgit_lab.sweeps.trainings``) on cells drawn from a known
model: FID = schedule value + training shift + training effect (sd sigma_b, one draw per
schedule and training, shared by its T) + sampling noise per seed; and the record of cells
a results folder keeps."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from maskgit_lab import stats as st
from maskgit_lab.errors import ConfigError
from maskgit_lab.sweeps import trainings as TR

SEEDS, STEPS = range(8), (4, 8)


def cells(rng, truth: dict[str, float], sigma_b: float | dict[str, float], trainings: int = 2,
          shifts=None, noise: float = 1.0) -> pd.DataFrame:
    """The cells of ``trainings`` trainings; ``sigma_b`` the sd of the training effect (or one per
    schedule), ``shifts`` each training's shift shared by its schedules."""
    rows = []
    for k in range(trainings):
        shift = 0.0 if shifts is None else shifts[k]
        for schedule, value in truth.items():
            effect = rng.normal(0, sigma_b[schedule] if isinstance(sigma_b, dict) else sigma_b)
            for steps in STEPS:
                for seed in SEEDS:
                    rows.append({"training": k, "schedule": schedule, "steps": steps, "seed": seed,
                                 "fid": value + shift + effect + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def split(df: pd.DataFrame):
    means = TR.training_means(df)
    return means, TR.between_trainings(means)


def test_sigma_b_is_recovered_and_a_shared_shift_is_not_counted():
    rng = np.random.default_rng(0)
    truth = {f"s{i}": 40 + rng.uniform(0, 10) for i in range(300)}
    means, sigma = split(cells(rng, truth, sigma_b=3.0, shifts=[0.0, 5.0]))
    assert len(means) == 300 * len(STEPS)
    for _, r in sigma.iterrows():
        assert r["shifts"] == pytest.approx([5.0], abs=0.6)
        assert r["sigma_b"] == pytest.approx(3.0, abs=0.35)
        assert r["sigma_b_lo"] < 3.0 < r["sigma_b_hi"]
        assert r["sampling_sd"] == pytest.approx(1 / np.sqrt(len(SEEDS)), rel=0.15)


def test_without_training_variation_sigma_b_is_near_zero():
    rng = np.random.default_rng(1)
    _, sigma = split(cells(rng, {f"s{i}": 40.0 + i for i in range(300)}, sigma_b=0.0))
    assert (sigma["sigma_b"] < 0.2).all()


def test_pooled_table_marks_include_the_training_variation():
    """Two schedules 6 FID apart: far beyond sampling noise (sd 0.35 per mean), but within the
    training variation (sigma_b 4) — the pooled table calls them not different; a schedule
    40 FID worse stays significantly worse and is the worst."""
    rng = np.random.default_rng(2)
    truth = {"good": 40.0, "close": 46.0, **{f"mid{i}": 50.0 for i in range(6)}, "bad": 90.0}
    means, sigma = split(cells(rng, truth, sigma_b=4.0))
    pooled = TR.pooled_table(means, sigma).set_index(["schedule", "steps"])
    for steps in STEPS:
        best = pooled.xs(steps, level="steps")["mean"].idxmin()
        assert best == "good" and pooled.loc[(best, steps), "mark"] == "*"
        assert pooled.loc[("bad", steps), "mark"] == "" and pooled.loc[("bad", steps), "p_vs_best"] < 0.001
        assert pooled.loc[("close", steps), "mark"] == "≈"
        assert pooled.loc[("good", steps), "half"] > 3 * sigma.loc[steps, "sampling_sd"]
    p_common = lambda a, b: st.diff_p(a["mean"], a["var"], b["mean"], b["var"], a["dof"])  # noqa: E731
    worst = TR.worst_test(TR.pooled_table(means, sigma), p_common)
    assert set(worst["worst"]) == {"bad"} and (worst["p"] < 0.001).all()


def test_pooled_intervals_by_hand():
    """Each pooled mean and half-width recomputed from the cells with numpy and scipy alone:
    the k x S table of seed means, its two-way residual, sigma_b^2 = MS_resid - mean(se^2),
    var = sigma_b^2 / k + sum(se^2) / k^2, half = t(0.975, (S - 1)(k - 1)) * sqrt(var)."""
    rng = np.random.default_rng(4)
    truth = {f"s{i}": 40 + 3 * i for i in range(6)}
    df = cells(rng, truth, sigma_b=2.0, trainings=3, shifts=[0.0, 3.0, 6.0])
    means, sigma = split(df)
    pooled = TR.pooled_table(means, sigma)
    for t in STEPS:
        g = df[df["steps"] == t]
        m = g.groupby(["schedule", "training"])["fid"].mean().unstack().to_numpy()
        se2 = (g.groupby(["schedule", "training"])["fid"].var() / len(SEEDS)).unstack().to_numpy()
        s, k = m.shape
        resid = m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + m.mean()
        sb2 = max(0.0, (resid ** 2).sum() / ((s - 1) * (k - 1)) - se2.mean())
        half = stats.t.ppf(0.975, (s - 1) * (k - 1)) * np.sqrt(sb2 / k + se2.sum(1) / k ** 2)
        mine = pooled[pooled["steps"] == t].set_index("schedule").loc[sorted(truth)]
        assert np.allclose(mine["mean"], m.mean(1)) and np.allclose(mine["half"], half)
        assert sigma.loc[t, "dof"] == (s - 1) * (k - 1) and sigma.loc[t, "sigma_b"] == pytest.approx(np.sqrt(sb2))


def test_welch_anova_of_two_groups_is_welchs_t_test():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 1, 8), rng.normal(1, 2, 6)
    means = np.array([x.mean(), y.mean()])
    se2 = np.array([x.var(ddof=1) / 8, y.var(ddof=1) / 6])
    p = st.welch_anova_p(means, se2, np.array([8, 6]))
    assert p == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-9)


def test_steps_contrasts_cancel_each_trainings_own_effect():
    """A large training effect (sd 10), shared by a model's T, drops out of the change from one
    T to the next; the change built into one schedule is found, the others' is ~0."""
    rng = np.random.default_rng(6)
    df = cells(rng, {"a": 50.0, "b": 50.0, "c": 60.0}, sigma_b=10.0, trainings=3)
    df.loc[(df["schedule"] == "a") & (df["steps"] == 8), "fid"] -= 5.0
    contrasts = TR.steps_contrasts(TR.training_means(df)).set_index("schedule")
    assert contrasts.loc["a", "mean"] == pytest.approx(-5.0, abs=0.8) and contrasts.loc["a", "p"] < 0.05
    assert abs(contrasts.loc["b", "mean"]) < 0.8 and abs(contrasts.loc["c", "mean"]) < 0.8
    assert (contrasts["from"] == 4).all() and (contrasts["to"] == 8).all()


def test_own_variation_follows_each_schedules_spread_and_pairs_out_the_shared_shift():
    """One schedule's training varies 8 times as much as the others'. The own-variation table
    gives it a wide interval and the others narrow ones, where the pooled table gives every
    row the same; Levene's test rejects equal variation. Each training also shifts the whole
    table by a large amount (sd 10): the paired marks cancel it, so a schedule 4 FID behind
    the best is still significantly worse."""
    rng = np.random.default_rng(7)
    truth = {"best": 40.0, "next": 44.0, **{f"mid{i}": 50.0 for i in range(5)}, "wild": 60.0}
    spread = {name: 8.0 if name == "wild" else 1.0 for name in truth}
    means, sigma = split(cells(rng, truth, spread, trainings=10, shifts=rng.normal(0, 10, 10), noise=0.5))
    own = TR.own_variation_table(means).set_index(["schedule", "steps"])
    pooled = TR.pooled_table(means, sigma).set_index(["schedule", "steps"])
    levene = TR.equal_variation_p(means)
    assert sorted(levene) == list(STEPS) and all(p < 0.05 for p in levene.values())
    for steps in STEPS:
        tame = own.xs(steps, level="steps").drop("wild")
        assert own.loc[("wild", steps), "half"] > 3 * tame["half"].max() and tame["sd"].max() < 2.5
        assert own.loc[("best", steps), "mark"] == "*" and own.loc[("next", steps), "mark"] == ""
        a, b = own.loc[("next", steps), "per_training"], own.loc[("best", steps), "per_training"]
        assert own.loc[("next", steps), "p_vs_best"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        half = stats.t.ppf(0.975, 9) * own.loc[("next", steps), "sd"] / np.sqrt(10)
        assert own.loc[("next", steps), "half"] == pytest.approx(half, rel=1e-9)
        assert np.ptp(pooled.xs(steps, level="steps")["half"]) < 0.1 * pooled.loc[("best", steps), "half"]
    worst = TR.worst_test(TR.own_variation_table(means), lambda a, b: st.paired_p(a["per_training"],
                                                                                  b["per_training"]))
    assert set(worst["worst"]) == {"wild"}
    head, method = TR.headline(means, sigma)
    assert method == "own" and np.allclose(head["half"], TR.own_variation_table(means)["half"])


def test_stability_variances_are_unbiased_and_average_to_the_residual_mean_square():
    rng = np.random.default_rng(10)
    sd = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    k, estimates = 5, []
    for _ in range(4000):
        m = 40 + np.arange(6)[:, None] + rng.normal(0, 5, (1, k)) + rng.normal(0, 1, (6, k)) * sd[:, None]
        v = st.stability_variances(m)
        e = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()
        assert v.mean() == pytest.approx((e ** 2).sum() / (5 * (k - 1)), rel=1e-9)
        estimates.append(v)
    assert np.mean(estimates, axis=0) == pytest.approx(sd ** 2, rel=0.08)


def test_levene_rejects_equal_variation_rarely_when_it_holds():
    rng = np.random.default_rng(8)
    truth = {f"s{i}": 40.0 + i for i in range(8)}
    rejections = 0
    for _ in range(60):
        means = TR.training_means(cells(rng, truth, 2.0, trainings=6, shifts=rng.normal(0, 3, 6)))
        rejections += sum(p < 0.05 for p in TR.equal_variation_p(means).values())
    assert rejections <= 0.1 * 60 * len(STEPS)


def test_two_trainings_lead_with_the_common_variation():
    rng = np.random.default_rng(9)
    means, sigma = split(cells(rng, {f"s{i}": 40.0 + i for i in range(4)}, 1.0))
    with pytest.raises(ConfigError, match="at least 3 trainings"):
        TR.own_variation_table(means)
    head, method = TR.headline(means, sigma)
    assert method == "common" and np.allclose(head["half"], TR.pooled_table(means, sigma)["half"])
    assert (head["sd"] >= 0).all()


def test_every_training_must_cover_the_same_cells_on_two_seeds():
    rng = np.random.default_rng(12)
    df = cells(rng, {f"s{i}": 40.0 + i for i in range(4)}, 1.0)
    with pytest.raises(ConfigError, match="training 1 lacks s3 at T=8"):
        TR.training_means(df[~((df["training"] == 1) & (df["schedule"] == "s3") & (df["steps"] == 8))])
    with pytest.raises(ConfigError, match="at least 2 sample seeds"):
        TR.training_means(df[df["seed"] == 0])


def test_the_record_keeps_finished_cells_and_refuses_what_is_not_its_own(tmp_path):
    rng = np.random.default_rng(13)
    df = cells(rng, {f"s{i}": 40.0 + i for i in range(3)}, 1.0)
    info = {"table_id": "x.schedule_ablation_trainings.aaaa", "trainings": 2}
    first = TR.record(tmp_path, info, df[df["training"] == 0])
    assert len(first) == len(df) // 2 and json.loads((tmp_path / TR.TABLE_FILE).read_text()) == info
    # recorded cells are kept as they are; new ones are added once
    changed = df.assign(fid=df["fid"] + 100)
    both = TR.record(tmp_path, info, changed)
    assert len(both) == len(df)
    kept = both[both["training"] == 0].sort_values(["schedule", "steps", "seed"])["fid"].to_numpy()
    assert np.allclose(kept, df[df["training"] == 0].sort_values(["schedule", "steps", "seed"])["fid"])
    assert TR.read_record(tmp_path)[1]["training"].tolist() == both["training"].tolist()
    # another table's folder
    with pytest.raises(ConfigError, match="holds the cells of table x.schedule_ablation_trainings.aaaa"):
        TR.record(tmp_path, {**info, "table_id": "x.schedule_ablation_trainings.bbbb"}, df)
    # an empty or header-only file, a file mixing two tables, a file without its table.json
    (tmp_path / TR.CELLS_FILE).write_text("")
    with pytest.raises(ConfigError, match="recorded cells cannot be read"):
        TR.read_record(tmp_path)
    (tmp_path / TR.CELLS_FILE).write_text("table_id,training,schedule,steps,seed,fid\n")
    with pytest.raises(ConfigError, match="holds no cells"):
        TR.read_record(tmp_path)
    mixed = both.assign(table_id=["x.a"] * (len(both) - 1) + ["x.b"])
    mixed.to_csv(tmp_path / TR.CELLS_FILE, index=False)
    with pytest.raises(ConfigError, match="mixes cells of several tables"):
        TR.read_record(tmp_path)
    (tmp_path / TR.TABLE_FILE).unlink()
    with pytest.raises(ConfigError, match="without table.json"):
        TR.read_record(tmp_path)
