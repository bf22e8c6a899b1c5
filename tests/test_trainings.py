"""The two-trainings comparison of Table 3 (``maskgit_lab.sweeps.trainings``) on cells drawn
from a known model: FID = schedule value + training effect (sd sigma_b, one draw per schedule
and training, shared by its T) + sampling noise per seed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from maskgit_lab.errors import ConfigError
from maskgit_lab.sweeps import trainings as TR

SEEDS, STEPS = range(8), (4, 8)


def cells(rng, truth: dict[str, float], sigma_b: float | dict[str, float], shift: float = 0.0,
          noise: float = 1.0) -> pd.DataFrame:
    """One training's cells; ``sigma_b`` the sd of the training effect, or one per schedule."""
    rows = []
    for schedule, value in truth.items():
        effect = rng.normal(0, sigma_b[schedule] if isinstance(sigma_b, dict) else sigma_b)
        for steps in STEPS:
            for seed in SEEDS:
                rows.append({"schedule": schedule, "steps": steps, "seed": seed, "mode": "train",
                             "fid": value + shift + effect + rng.normal(0, noise)})
    for seed in SEEDS:  # reference rows, which the comparison leaves out
        rows.append({"schedule": None, "steps": None, "seed": seed, "reference_row": "real_validation", "fid": 3.0})
    return pd.DataFrame(rows)


def write(tmp_path, name, df):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_sigma_b_is_recovered_and_a_shared_shift_is_not_counted(tmp_path):
    rng = np.random.default_rng(0)
    truth = {f"s{i}": 40 + rng.uniform(0, 10) for i in range(300)}
    a = TR.read_cells(write(tmp_path, "a.csv", cells(rng, truth, sigma_b=3.0)))
    b = TR.read_cells(write(tmp_path, "b.csv", cells(rng, truth, sigma_b=3.0, shift=5.0)))
    per_cell, sigma = TR.between_trainings([a, b])
    assert len(per_cell) == 300 * len(STEPS)
    for _, r in sigma.iterrows():
        assert float(r["shift"]) == pytest.approx(5.0, abs=0.6)
        assert r["sigma_b"] == pytest.approx(3.0, abs=0.35)
        assert r["sigma_b_lo"] < 3.0 < r["sigma_b_hi"]
        assert r["sampling_sd"] == pytest.approx(1 / np.sqrt(len(SEEDS)), rel=0.15)


def test_without_training_variation_sigma_b_is_near_zero(tmp_path):
    rng = np.random.default_rng(1)
    truth = {f"s{i}": 40.0 + i for i in range(300)}
    a = TR.read_cells(write(tmp_path, "a.csv", cells(rng, truth, sigma_b=0.0)))
    b = TR.read_cells(write(tmp_path, "b.csv", cells(rng, truth, sigma_b=0.0)))
    _, sigma = TR.between_trainings([a, b])
    assert (sigma["sigma_b"] < 0.2).all()


def test_pooled_table_marks_include_the_training_variation(tmp_path):
    """Two schedules 6 FID apart: far beyond sampling noise (sd 0.35 per mean), but within the
    training variation (sigma_b 4) — the pooled table calls them not different; a schedule
    40 FID worse stays significantly worse and is the worst."""
    rng = np.random.default_rng(2)
    truth = {"good": 40.0, "close": 46.0, **{f"mid{i}": 50.0 for i in range(6)}, "bad": 90.0}
    a = TR.read_cells(write(tmp_path, "a.csv", cells(rng, truth, sigma_b=4.0)))
    b = TR.read_cells(write(tmp_path, "b.csv", cells(rng, truth, sigma_b=4.0)))
    per_cell, sigma = TR.between_trainings([a, b])
    pooled = TR.pooled_table(per_cell, sigma).set_index(["schedule", "steps"])
    for steps in STEPS:
        best = pooled.xs(steps, level="steps")["mean"].idxmin()
        assert pooled.loc[(best, steps), "mark"] == "*"
        assert pooled.loc[("bad", steps), "mark"] == "" and pooled.loc[("bad", steps), "p_vs_best"] < 0.001
        assert best == "good" and pooled.loc[("close", steps), "mark"] == "≈"
        # the half-width is dominated by the training variation, not the seeds
        assert pooled.loc[("good", steps), "half"] > 3 * sigma.loc[steps, "sampling_sd"]
    worst = TR.worst_test(TR.pooled_table(per_cell, sigma))
    assert set(worst["worst"]) == {"bad"} and (worst["p"] < 0.001).all()


def test_cli_writes_the_report_and_rejects_bad_inputs(tmp_path, capsys):
    rng = np.random.default_rng(3)
    truth = {f"s{i}": 40.0 + 2 * i for i in range(5)}
    a, b = write(tmp_path, "a.csv", cells(rng, truth, 2.0)), write(tmp_path, "b.csv", cells(rng, truth, 2.0))
    out = tmp_path / "report.md"
    assert TR.main([str(a), str(b), "--names", "first", "second", "--out", str(out)]) == 0
    text = out.read_text()
    assert "first (A), second (B)" in text and "| s4 | 8 |" in text and "Worst schedule" in text

    other = cells(rng, {k: v for k, v in truth.items() if k != "s4"}, 2.0)
    with pytest.raises(ConfigError, match="same schedules and T"):
        TR.between_trainings([TR.read_cells(a), TR.read_cells(write(tmp_path, "c.csv", other))])
    decode = cells(rng, truth, 2.0).assign(mode="decode")
    with pytest.raises(ConfigError, match="decode-mode"):
        TR.read_cells(write(tmp_path, "d.csv", decode))
    with pytest.raises(ConfigError, match="no column"):
        TR.read_cells(write(tmp_path, "e.csv", pd.DataFrame({"x": [1]})))

    capsys.readouterr()
    for argv, message in (([str(a), str(b), "--names", "first"], "--names gives 1 labels for 2 files"),
                          ([str(a)], "at least two")):
        with pytest.raises(SystemExit) as exc:
            TR.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and message in err[0]

    bad_out = tmp_path / "bad.md"
    proc = subprocess.run([sys.executable, "-m", "maskgit_lab.sweeps.trainings", str(a), str(tmp_path / "nope.csv"),
                           "--out", str(bad_out)], capture_output=True, text=True)
    assert proc.returncode != 0 and not bad_out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope.csv" in proc.stderr and "not found" in proc.stderr


def test_three_trainings_pool_their_degrees_of_freedom(tmp_path):
    rng = np.random.default_rng(4)
    truth = {f"s{i}": 40 + rng.uniform(0, 10) for i in range(100)}
    frames = [TR.read_cells(write(tmp_path, f"{r}.csv", cells(rng, truth, sigma_b=2.0, shift=3.0 * r)))
              for r in range(3)]
    per_cell, sigma = TR.between_trainings(frames)
    assert (sigma["dof"] == 99 * 2).all()
    for _, r in sigma.iterrows():
        assert [float(x) for x in r["shift"].split(",")] == pytest.approx([3.0, 6.0], abs=0.7)
        assert r["sigma_b"] == pytest.approx(2.0, abs=0.25) and r["sigma_b_lo"] < 2.0 < r["sigma_b_hi"]
    pooled = TR.pooled_table(per_cell, sigma)
    expected = sigma.loc[4, "sigma_b"] ** 2 / 3 + per_cell[["se2_0", "se2_1", "se2_2"]].sum(axis=1) / 9
    assert np.allclose(pooled[pooled["steps"] == 4]["var"], expected[per_cell["steps"] == 4])
    assert "max - min" in TR.report(per_cell, sigma, pooled, ["a", "b", "c"])


def test_welch_anova_of_two_groups_is_welchs_t_test():
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 1, 8), rng.normal(1, 2, 6)
    means = np.array([x.mean(), y.mean()])
    se2 = np.array([x.var(ddof=1) / 8, y.var(ddof=1) / 6])
    p = TR.welch_anova_p(means, se2, np.array([8, 6]))
    assert p == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-9)


def test_steps_contrasts_cancel_each_trainings_own_effect(tmp_path):
    """A large training effect (sd 10), shared by a model's T, drops out of the change from one
    T to the next; the change built into one schedule is found, the others' is ~0."""
    rng = np.random.default_rng(6)
    truth = {"a": 50.0, "b": 50.0, "c": 60.0}
    frames = []
    for r in range(3):
        df = cells(rng, truth, sigma_b=10.0)
        df.loc[(df["schedule"] == "a") & (df["steps"] == 8), "fid"] -= 5.0
        frames.append(TR.read_cells(write(tmp_path, f"{r}.csv", df)))
    per_cell, sigma = TR.between_trainings(frames)
    contrasts = TR.steps_contrasts(per_cell).set_index("schedule")
    assert contrasts.loc["a", "mean"] == pytest.approx(-5.0, abs=0.8) and contrasts.loc["a", "p"] < 0.05
    assert abs(contrasts.loc["b", "mean"]) < 0.8 and abs(contrasts.loc["c", "mean"]) < 0.8
    assert (contrasts["from"] == 4).all() and (contrasts["to"] == 8).all()
    assert "## FID from one T to the next" in TR.report(per_cell, sigma, TR.pooled_table(per_cell, sigma), ["x", "y", "z"])


def test_own_variation_follows_each_schedules_spread_and_pairs_out_the_shared_shift(tmp_path):
    """One schedule's training varies 8 times as much as the others'. The own-variation table
    gives it a wide interval and the others narrow ones, where the pooled table gives every
    row the same; Levene's test rejects equal variation. Each training also shifts the whole
    table by a large amount (sd 10): the paired marks cancel it, so a schedule 4 FID behind
    the best is still significantly worse."""
    rng = np.random.default_rng(7)
    truth = {"best": 40.0, "next": 44.0, **{f"mid{i}": 50.0 for i in range(5)}, "wild": 60.0}
    spread = {name: 8.0 if name == "wild" else 1.0 for name in truth}
    frames = [TR.read_cells(write(tmp_path, f"{r}.csv", cells(rng, truth, spread, shift=rng.normal(0, 10), noise=0.5)))
              for r in range(6)]
    per_cell, sigma = TR.between_trainings(frames)
    own = TR.own_variation_table(per_cell).set_index(["schedule", "steps"])
    pooled = TR.pooled_table(per_cell, sigma).set_index(["schedule", "steps"])
    levene = TR.equal_variation_test(per_cell)
    assert list(levene.index) == list(STEPS) and (levene < 0.05).all()
    for steps in STEPS:
        tame = own.xs(steps, level="steps").drop("wild")
        # the shared shift (sd 10) is not in a schedule's own variation
        assert own.loc[("wild", steps), "half"] > 3 * tame["half"].max() and tame["sd"].max() < 2.5
        assert own.loc[("best", steps), "mark"] == "*" and own.loc[("next", steps), "mark"] == ""
        a, b = own.loc[("next", steps), "per_training"], own.loc[("best", steps), "per_training"]
        assert own.loc[("next", steps), "p_vs_best"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
        half = stats.t.ppf(0.975, 5) * own.loc[("next", steps), "sd"] / np.sqrt(6)
        assert own.loc[("next", steps), "half"] == pytest.approx(half, rel=1e-9)
        assert np.ptp(pooled.xs(steps, level="steps")["half"]) < 0.1 * pooled.loc[("best", steps), "half"]
    worst = TR.worst_test(TR.own_variation_table(per_cell), TR._paired_p)
    assert set(worst["worst"]) == {"wild"}
    text = TR.report(per_cell, sigma, TR.pooled_table(per_cell, sigma), [str(r) for r in range(6)])
    assert "each schedule with its own variation" in text and "Levene" in text and "(paired test)" in text


def test_stability_variances_are_unbiased_and_average_to_the_residual_mean_square():
    rng = np.random.default_rng(10)
    sd = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 4.0])
    k, estimates = 5, []
    for _ in range(4000):
        m = 40 + np.arange(6)[:, None] + rng.normal(0, 5, (1, k)) + rng.normal(0, 1, (6, k)) * sd[:, None]
        v = TR.stability_variances(m)
        e = m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()
        assert v.mean() == pytest.approx((e ** 2).sum() / (5 * (k - 1)), rel=1e-9)
        estimates.append(v)
    assert np.mean(estimates, axis=0) == pytest.approx(sd ** 2, rel=0.08)
    with pytest.raises(ConfigError, match="at least 3 schedules"):
        TR.stability_variances(np.ones((2, 4)))


def test_levene_rejects_equal_variation_rarely_when_it_holds(tmp_path):
    rng = np.random.default_rng(8)
    truth = {f"s{i}": 40.0 + i for i in range(8)}
    rejections = 0
    for rep in range(60):
        frames = [TR.read_cells(write(tmp_path, f"{rep}-{r}.csv", cells(rng, truth, 2.0, shift=rng.normal(0, 3))))
                  for r in range(6)]
        per_cell, _ = TR.between_trainings(frames)
        rejections += int((TR.equal_variation_test(per_cell) < 0.05).sum())
    assert rejections <= 0.1 * 60 * len(STEPS)


def test_own_variation_needs_three_trainings(tmp_path):
    rng = np.random.default_rng(9)
    truth = {f"s{i}": 40.0 + i for i in range(4)}
    frames = [TR.read_cells(write(tmp_path, f"{r}.csv", cells(rng, truth, 1.0))) for r in range(2)]
    per_cell, sigma = TR.between_trainings(frames)
    with pytest.raises(ConfigError, match="at least 3 trainings"):
        TR.own_variation_table(per_cell)
    assert "own variation" not in TR.report(per_cell, sigma, TR.pooled_table(per_cell, sigma), ["a", "b"])


def test_a_training_split_over_several_ablations_is_read_as_one(tmp_path):
    rng = np.random.default_rng(11)
    truth = {f"s{i}": 40.0 + 2 * i for i in range(5)}
    whole = [cells(rng, truth, 2.0) for _ in range(3)]
    specs = []
    for r, df in enumerate(whole):  # each training's schedules run as two ablations
        first = df[df["schedule"].isin(["s0", "s1"]) | df["schedule"].isna()]
        second = df[df["schedule"].isin(["s2", "s3", "s4"]) | df["schedule"].isna()]
        specs.append(f"{write(tmp_path, f'a{r}.csv', first)},{write(tmp_path, f'b{r}.csv', second)}")
    for spec, df in zip(specs, whole, strict=True):
        pd.testing.assert_frame_equal(TR.read_training(spec), TR.read_cells(write(tmp_path, "w.csv", df)))
    split_out, whole_out = tmp_path / "split.md", tmp_path / "whole.md"
    assert TR.main([*specs, "--names", "A", "B", "C", "--out", str(split_out)]) == 0
    assert TR.main([str(write(tmp_path, f"w{r}.csv", df)) for r, df in enumerate(whole)]
                   + ["--names", "A", "B", "C", "--out", str(whole_out)]) == 0
    assert split_out.read_text() == whole_out.read_text()

    overlap = f"{tmp_path / 'a0.csv'},{tmp_path / 'a1.csv'}"
    with pytest.raises(ConfigError, match="both hold s0 at T=4"):
        TR.read_training(overlap)
    with pytest.raises(ConfigError, match="not found"):
        TR.read_training(f"{tmp_path / 'a0.csv'},{tmp_path / 'nope.csv'}")
