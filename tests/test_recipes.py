"""Comparing two training recipes' trainings (``maskgit_lab.sweeps.recipes``): the spread and
level estimates recover planted values, the F-test keeps its size when nothing differs, the
trainings needed meet the target and no fewer would, and the command's report and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from maskgit_lab.sweeps import recipes as R


def write_training(path, rng, level: dict, seeds=3, noise=0.5, schedules=("cosine", "linear"), steps=(4, 8)):
    """A cells file of one training: per cell, ``level[(schedule, T)]`` plus sampling noise per seed."""
    rows = [{"schedule": s, "steps": t, "seed": seed, "fid": level[(s, t)] + noise * rng.standard_normal()}
            for s in schedules for t in steps for seed in range(seeds)]
    rows += [{"reference_row": "real", "seed": seed, "fid": 1.0} for seed in range(seeds)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def recipe(tmp_path, name, rng, k, centre, spread):
    """k trainings whose cell levels vary by ``spread`` around ``centre`` (+ one per cell)."""
    files = []
    for i in range(k):
        level = {(s, t): centre + j + spread * rng.standard_normal()
                 for j, (s, t) in enumerate((s, t) for s in ("cosine", "linear") for t in (4, 8))}
        files.append(write_training(tmp_path / name / f"t{i}" / "cells.csv", rng, level))
    return files


def test_planted_spread_and_level_are_recovered(tmp_path):
    rng = np.random.default_rng(0)
    a = recipe(tmp_path, "a", rng, 60, 40.0, 5.0)
    b = recipe(tmp_path, "b", rng, 60, 37.0, 1.0)
    (ma, sa), (mb, sb) = R.training_means(a), R.training_means(b)
    table = R.compare(ma, mb, sa, sb)
    assert len(table) == 4 and set(table["schedule"]) == {"cosine", "linear"}
    # sd of a training's mean: sqrt(spread^2 + noise^2 / seeds); interval coverage is tested
    # by simulation below
    true_ratio = np.sqrt((1 + 0.25 / 3) / (25 + 0.25 / 3))
    for _, r in table.iterrows():
        # 60 trainings each: the log of an sd ratio has a standard error of about 0.13
        assert abs(np.log(r["ratio"] / true_ratio)) < 0.4
        assert r["ratio_ci"][0] < r["ratio"] < r["ratio_ci"][1]
        assert r["p_f"] < 1e-6 and r["p_bf"] < 1e-3
        assert abs(r["diff"] + 3.0) < 4 * r["diff_half"] / 1.96
        assert abs(np.log(r["sd_a"] / np.sqrt(25 + 0.25 / 3))) < 0.3
        assert abs(r["sampling_a"] - 0.5 / np.sqrt(3)) < 0.1
        assert r["needed_a"] > r["needed_b"]


def test_f_test_keeps_its_size_when_the_recipes_vary_alike():
    rng = np.random.default_rng(1)
    idx = pd.MultiIndex.from_tuples([("cosine", 8)], names=["schedule", "steps"])
    ps, covered, sd_covered = [], 0, 0
    for _ in range(400):
        a = pd.DataFrame([rng.normal(40, 3, 8)], index=idx)
        b = pd.DataFrame([rng.normal(40, 3, 6)], index=idx)
        r = R.compare(a, b, a * 0 + 1, b * 0 + 1).iloc[0]
        ps.append(r["p_f"])
        covered += r["ratio_ci"][0] < 1 < r["ratio_ci"][1]
        sd_covered += r["sd_a_ci"][0] < 3 < r["sd_a_ci"][1]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09
    assert 0.91 <= covered / 400 <= 0.98 and 0.91 <= sd_covered / 400 <= 0.98


@pytest.mark.parametrize("sd, target", [(1.0, 2.0), (3.3, 2.0), (5.07, 2.0), (0.5, 0.3)])
def test_trainings_needed_is_the_fewest_that_reach_the_target(sd, target):
    k = R.trainings_needed(sd, target)
    def half(n):
        return stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    assert half(k) <= target
    assert k == 2 or half(k - 1) > target


def test_command_reports_and_refuses_bad_input(tmp_path, capsys):
    rng = np.random.default_rng(2)
    a = recipe(tmp_path, "a", rng, 3, 40.0, 3.0)
    b = recipe(tmp_path, "b", rng, 3, 38.0, 1.0)
    out = tmp_path / "recipes.md"
    assert R.main(["--a", *a, "--b", *b, "--label-a", "plain", "--label-b", "blank 0.1",
                   "--names-b", "s0", "s1", "s2", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Two training recipes: plain (a, 3 trainings) against blank 0.1 (b, 3 trainings)")
    assert "b: s0, s1, s2" in text and text.count("\n| cosine |") == 2 and text.count("\n| linear |") == 2

    other = write_training(tmp_path / "c" / "cells.csv", rng, {("arccos", 4): 40.0}, schedules=("arccos",), steps=(4,))
    cases = [(["--a", a[0], "--b", *b], "--a needs at least two"),
             (["--a", *a, "--b", *b, "--names-a", "x"], "--names-a gives 1 labels for 3 files"),
             (["--a", *a, "--b", other, other], "share no (schedule, T) cell"),
             (["--a", *a, "--b", *b, "--target", "0"], "--target must be a positive"),
             (["--a", *a, "--b", str(tmp_path / "nowhere.csv"), *b], "not found"),
             (["--a", *a, "--b", *b, "--out", str(tmp_path / "x.json")], "must end in .md")]
    for argv, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            R.main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.json").exists()
