"""The two-trainings comparison of Table 3 (``maskgit_lab.sweeps.trainings``) on cells drawn
from a known model: FID = schedule value + training effect (sd sigma_b, one draw per schedule
and training, shared by its T) + sampling noise per seed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from maskgit_lab.errors import ConfigError
from maskgit_lab.sweeps import trainings as TR

SEEDS, STEPS = range(8), (4, 8)


def cells(rng, truth: dict[str, float], sigma_b: float, shift: float = 0.0, noise: float = 1.0) -> pd.DataFrame:
    rows = []
    for schedule, value in truth.items():
        effect = rng.normal(0, sigma_b)
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
    from scipy import stats
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
