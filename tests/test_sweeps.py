"""The schedule ablation sweep end to end on the smoke preset: outputs, resumption after
SIGKILL, two workers on one study, tables rebuilt from MLflow, and bad arguments."""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import SMOKE, model_path, sweep_args
from scipy import stats

from maskgit_lab.sweeps import rebuild, schedule_ablation

CELLS = 16  # the smoke grid: 3 schedules x 2 step counts x 2 seeds, and 2 reference rows x 2 seeds


def finished_cells(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string="tags.sweep_role = 'cell' and attributes.status = 'FINISHED'")
    return sorted(runs["tags.cell"])


def complete_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    keys = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            names = ("reference_row", "seed") if "reference_row" in t.params else ("schedule", "steps", "seed")
            keys.append(",".join(f"{n}={t.params[n]}" for n in names))
    return sorted(keys)


def test_ablation_outputs_and_rerun_reuses_every_cell(trained, tmp_path, capsys):
    assert schedule_ablation.main(sweep_args(trained, tmp_path)) == 0
    out = tmp_path / "results"
    for f in ("schedule_ablation.csv", "schedule_ablation.md", "schedule_ablation.tex", "fid_vs_steps.png",
              "fid_vs_steps.csv", "schedules.png", "summary.json"):
        assert (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["schedules"]) == {"cosine", "linear", "exponential"} and summary["mode"] == "train"
    md = (out / "schedule_ablation.md").read_text()
    assert "per-schedule training" in md and "paper FID" in md and "paired t-test" in md
    assert "cover sampling only" in md and "--trainings K" in md, \
        "the caption says training variation is not in the intervals, and what measures it"
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "γ" not in line]
    assert rows == ["Exponential", "Cosine", "Linear", "real validation images (floor)",
                    "tokenizer reconstructions (ceiling)"], "Table 3's row order, then the reference rows"
    for s in ("cosine", "linear", "exponential"):  # the paper's design: one model trained per schedule
        assert model_path(trained[0], "transformer", f"transformer_train.schedule={s}").is_file()
    # every interval is the 95% t interval of the per-seed cells (recomputed independently)
    raw = pd.read_csv(out / "schedule_ablation_cells.csv")
    for (sched, t), g in raw[raw["schedule"].notna()].groupby(["schedule", "steps"]):
        agg = summary["schedules"][sched][str(int(t))]
        fid = g["fid"].to_numpy()
        half = stats.t.ppf(0.975, len(fid) - 1) * fid.std(ddof=1) / np.sqrt(len(fid))
        assert agg["fid_mean"] == pytest.approx(fid.mean()) and agg["fid_ci"] == pytest.approx(half)
        assert agg["seeds"] == 2
    for t, best in summary["best_per_steps"].items():
        means = {s: summary["schedules"][s][t]["fid_mean"] for s in summary["schedules"]}
        assert best["schedule"] == min(means, key=means.get)
    assert set(summary["references"]) == {"real", "reconstruction"}
    cells = finished_cells(tmp_path)
    assert len(cells) == CELLS and cells == complete_trials(tmp_path)
    first = (out / "schedule_ablation.csv").read_text()

    capsys.readouterr()
    assert schedule_ablation.main(sweep_args(trained, tmp_path)) == 0
    assert "[1/" not in capsys.readouterr().out, "a finished sweep recomputes nothing"
    assert finished_cells(tmp_path) == cells and (out / "schedule_ablation.csv").read_text() == first

    # The tables rebuild from MLflow alone, to the same numbers, in the kind's folder under the root.
    overrides, _ = trained
    assert rebuild.main(["--config", SMOKE, "--out-dir", str(tmp_path / "rebuilt"), *overrides,
                        f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    assert (tmp_path / "rebuilt" / "table3" / "schedule_ablation.csv").read_text() == first


def test_growing_the_grid_measures_only_the_new_cells(trained, tmp_path, capsys):
    """More seeds (or T values) keep the sweep's id: the finished cells are reused from
    MLflow, only the new ones are measured, and each table shows exactly its own grid."""
    assert schedule_ablation.main(sweep_args(trained, tmp_path, "sweep.seeds=[1]", "sweep.steps=[2]")) == 0
    small = pd.read_csv(tmp_path / "results" / "schedule_ablation_cells.csv")
    assert len(small) == 3 + 2 and set(small["seed"]) == {1}
    capsys.readouterr()

    assert schedule_ablation.main(sweep_args(trained, tmp_path)) == 0  # seeds [0, 1], T [2, 4]
    out = capsys.readouterr().out
    assert out.count("(reused)") == 5, "the 3 cells and 2 reference cells of the small grid"
    measured = [line for line in out.splitlines() if line.startswith("[") and "(reused)" not in line]
    assert len(measured) == CELLS - 5
    cells = finished_cells(tmp_path)
    assert len(cells) == CELLS == len(set(cells)), "every cell measured once, in one MLflow run"
    grown = pd.read_csv(tmp_path / "results" / "schedule_ablation_cells.csv")
    assert len(grown) == CELLS and set(grown["seed"]) == {0, 1}
    # a reused cell keeps its numbers
    key = ["schedule", "steps", "seed", "reference_row"]
    both = small.merge(grown, on=[k for k in key if k in small], suffixes=("_small", "_grown"))
    assert len(both) == 5 and np.allclose(both["fid_small"], both["fid_grown"])
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["schedules"]["cosine"]["4"]["seeds"] == 2

    capsys.readouterr()  # back to the small grid: nothing to measure, the table has its grid only
    assert schedule_ablation.main(sweep_args(trained, tmp_path, "sweep.seeds=[1]", "sweep.steps=[2]")) == 0
    out = capsys.readouterr().out
    assert "3 of 3 cells already measured" in out and "0 to measure" in out
    assert not [line for line in out.splitlines() if line.startswith("[")]
    again = pd.read_csv(tmp_path / "results" / "schedule_ablation_cells.csv")
    assert len(again) == 5 and set(again["seed"]) == {1} and finished_cells(tmp_path) == cells


def _launch(trained, tmp_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "sweeps/schedule_ablation.py", *sweep_args(trained, tmp_path, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _launch_until(trained, tmp_path, done: int, *extra):
    """A sweep in a subprocess, returned once ``done`` of its cells are complete and it is still running."""
    proc = _launch(trained, tmp_path, *extra)
    deadline = time.time() + 240
    while _n_complete(tmp_path) < done and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be signalled:\n" + proc.stdout.read()
    return proc


def _n_complete(tmp_path) -> int:
    db = tmp_path / "optuna.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def finished_run_ids(tmp_path) -> dict[str, str]:
    """{cell: run id} of the FINISHED cell runs in the store."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string="tags.sweep_role = 'cell' and attributes.status = 'FINISHED'")
    return dict(zip(runs["tags.cell"], runs["run_id"], strict=True)) if len(runs) else {}


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_finishes_each_cell_once(trained, tmp_path):
    proc = _launch_until(trained, tmp_path, 2, "sweep.seed=1")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished_run_ids(tmp_path)
    assert 0 < len(before) < CELLS, f"killed with {len(before)} of {CELLS} cells done"
    assert schedule_ablation.main(sweep_args(trained, tmp_path, "sweep.seed=1")) == 0
    after = finished_run_ids(tmp_path)
    assert len(after) == CELLS and sorted(after) == complete_trials(tmp_path)
    # the cells finished before the kill keep their runs (a cell measured again gets a new
    # run and loses the old): the re-run computed exactly the missing ones
    assert {c: after[c] for c in before} == before
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert len(summary["schedules"]) == 3


@pytest.mark.slow
def test_sigterm_mid_sweep_leaves_nothing_running(trained, tmp_path):
    proc = _launch_until(trained, tmp_path, 1, "sweep.seed=3")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert out.strip().splitlines()[-1].startswith("terminated: "), out[-2000:]
    with sqlite3.connect(tmp_path / "optuna.db") as con:
        states = dict(con.execute("select state, count(*) from trials group by state").fetchall())
    assert "RUNNING" not in states and 0 < states.get("COMPLETE", 0) < CELLS, states
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert "RUNNING" not in set(runs["status"]), runs[["tags.mlflow.runName", "status"]]
    assert list(runs.loc[runs["tags.sweep_role"] == "parent", "status"]) == ["KILLED"]


@pytest.mark.slow
def test_two_workers_share_one_study(trained, tmp_path):
    procs = [_launch(trained, tmp_path, "sweep.seed=2") for _ in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    cells = finished_cells(tmp_path)
    assert len(cells) == CELLS == len(set(cells)) and cells == complete_trials(tmp_path)
    # No cell was computed twice across the two workers (which worker takes how many
    # depends on start-up timing; a slow starter may find every cell taken).
    ran = [sum(bool(re.match(r"\[\d+/\d+[,\]]", line)) for line in out.splitlines()) for out in outputs]
    assert sum(ran) == CELLS, f"cells computed per worker: {ran}"


@pytest.mark.parametrize("extra, message", [
    (["sweep.schedules=[cosine,zigzag]"], "unknown mask schedule 'zigzag'"),
    (["sweep.steps=[2,999]"], "T=999 impossible"),
    (["sampling.choice_temperature=-1"], "choice_temperature"),
    (["sampling.guidance_weight=1", "transformer_train.class_dropout=0"], "class dropout"),
])
def test_bad_arguments_fail_before_any_work(trained, tmp_path, extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        schedule_ablation.main(sweep_args(trained, tmp_path, *extra))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/none", "sqlite:////dev/null/optuna.db"])
def test_unopenable_storage_is_one_line(trained, tmp_path, url):
    args = sweep_args(trained, tmp_path)
    args[args.index("--storage") + 1] = url
    r = subprocess.run([sys.executable, "sweeps/schedule_ablation.py", *args], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot open Optuna storage" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_tune_sampler_runs_resumes_and_records(trained, tmp_path, monkeypatch):
    from maskgit_lab.sweeps import optuna_study, tune_sampler

    args = sweep_args(trained, tmp_path, "sweep.tune_trials=3")
    assert tune_sampler.main(args) == 0
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == 3 and all({"steps", "order", "temperature_schedule", "guidance_weight"} <= set(t.params)
                                      for t in finished)
    # the choice temperature is searched where it means something: the confidence order
    assert all(("choice_temperature" in t.params) == (t.params["order"] == "confidence") for t in finished)
    assert 2 <= study.best_trial.params["steps"] <= 6  # sweep.tune_max_steps of the smoke preset
    assert tune_sampler.main(args) == 0 and len(study.get_trials()) == 3, "a finished study adds no trials"
    assert tune_sampler.main([*args, "--trials", "4"]) == 0 and len(study.get_trials()) == 4, "a larger budget continues"
    md = (tmp_path / "results" / "tune_sampler_cosine.md").read_text()
    assert "FID" in md and f"trial {study.best_trial.number}" in md and "held-out seeds [1000, 1001]" in md
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.sweep_role = 'cell'")
    assert len(runs) == 4 and runs["params.decode.steps"].notna().all()

    orphan = study.ask().number  # a worker killed inside ask(): a trial nobody claimed
    monkeypatch.setattr(optuna_study, "UNCLAIMED_S", 1.0)
    assert tune_sampler.main([*args, "--trials", "5"]) == 0
    assert study.get_trials()[orphan].state == optuna.trial.TrialState.FAIL
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 5, \
        "the dead worker's place in the budget is taken by a new trial"


def test_cells_of_older_sampler_numerics_are_not_reused(monkeypatch):
    from maskgit_lab.config import load_config
    from maskgit_lab.sweeps import common

    cfg = load_config(SMOKE)
    before = common.sweep_id(cfg, "schedule_ablation", grid_keys=("seeds",))
    assert common.sweep_id(cfg, "schedule_ablation", grid_keys=("seeds",)) == before
    monkeypatch.setattr(common, "NUMERICS_REVISION", common.NUMERICS_REVISION + 1)
    assert common.sweep_id(cfg, "schedule_ablation", grid_keys=("seeds",)) != before


@pytest.mark.slow  # two worker processes train six smoke models and measure their cells
def test_table_over_trainings_by_two_workers_then_grown_and_rebuilt(trained, tmp_path, capsys):
    """--trainings 2: two workers share the units (training, schedule) through one SQLite study;
    every model is trained once, every cell measured once; the pooled intervals are the hand
    computation's. --trainings 3 then measures only training 2, and the table rebuilds from the
    recorded cells alone."""
    overrides, root = trained
    runs = tmp_path / "runs"
    for src in (model_path(overrides, "tokenizer").parent, root / "tokens"):
        shutil.copytree(src, runs / "fmnist_smoke" / src.name)
    mine = [o for o in overrides if not o.startswith("runs_dir=")] + [f"runs_dir={runs}"]
    args = ["--config", SMOKE, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out-dir",
            str(tmp_path / "results"), *mine, f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "sweeps/schedule_ablation.py", "--trainings", "2", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    trained_here = [line for log in logs for line in log.splitlines() if ": val loss" in line]
    assert len(trained_here) == 6, "each of the 2 x 3 models trained once, by one of the workers"
    assert all(any("training " in line and "mean FID" in line and "(recorded)" not in line
                   for line in log.splitlines()) for log in logs), "both workers took units"
    out = tmp_path / "results"
    cells = pd.read_csv(out / "cells.csv")
    sched = cells[cells["schedule"].notna()]
    assert len(sched) == 2 * 3 * 2 * 2 and not sched.duplicated(["training", "schedule", "steps", "seed"]).any()
    assert sorted(cells["reference_row"].dropna()) == ["real", "real", "reconstruction", "reconstruction"]
    assert len(finished_cells(tmp_path)) == len(cells) == len(set(finished_cells(tmp_path)))
    # the pooled intervals by hand: k = 2 trainings, the common sigma_b
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainings"] == 2 and summary["intervals"] == "common"
    for t in (2, 4):
        g = sched[sched["steps"] == t]
        m = g.groupby(["schedule", "training"])["fid"].mean().unstack()
        se2 = (g.groupby(["schedule", "training"])["fid"].var() / 2).unstack()
        resid = m.to_numpy() - m.to_numpy().mean(1, keepdims=True) - m.to_numpy().mean(0, keepdims=True) + m.to_numpy().mean()
        sb2 = max(0.0, (resid ** 2).sum() / 2 - se2.to_numpy().mean())
        half = stats.t.ppf(0.975, 2) * np.sqrt(sb2 / 2 + se2.sum(1) / 4)
        for s in m.index:
            row = summary["schedules"][s][str(t)]
            assert row["mean"] == pytest.approx(m.loc[s].mean()) and row["half"] == pytest.approx(half[s])
    first = (out / "schedule_ablation.md").read_text()
    assert "over 2 trainings" in first and "SD T=2" in first

    # grown to three trainings: trainings 0 and 1 come from the record, only training 2 is trained
    capsys.readouterr()
    assert schedule_ablation.main(["--trainings", "3", *args]) == 0
    log = capsys.readouterr().out
    assert log.count("(recorded)") == 6 and log.count(": val loss") == 3
    assert len(list((runs / "fmnist_smoke").glob("transformer-*-seed2-*"))) == 3
    assert json.loads((out / "summary.json").read_text())["intervals"] == "own"
    grown = (out / "schedule_ablation.md").read_text()
    # the table rebuilds from the results folder alone, to the same text
    (out / "schedule_ablation.md").unlink()
    assert rebuild.main(["--cells", str(out)]) == 0
    assert (out / "schedule_ablation.md").read_text() == grown


def test_order_ablation_grid_table_and_figure(trained, tmp_path):
    """order x schedule x T x seed, each schedule's own model: every cell once in MLflow, the
    table's intervals are the seeds' t intervals, and the paired differences against the
    confidence order are those of the cells."""
    from maskgit_lab.sweeps import order_ablation

    assert order_ablation.main(sweep_args(trained, tmp_path, "sweep.steps=[2,4]",
                                          "sweep.schedules=[cosine,linear]")) == 0
    out = tmp_path / "results"
    for f in ("order_ablation.md", "order_ablation.csv", "order_ablation.tex", "order_vs_steps.png", "summary.json",
              "order_ablation_cells.csv"):
        assert (out / f).stat().st_size > 0, f
    raw = pd.read_csv(out / "order_ablation_cells.csv")
    grid = raw[raw["order"].notna()]
    assert len(grid) == 3 * 2 * 2 * 2 and set(grid["order"]) == {"confidence", "random", "halton"}
    assert len(finished_cells(tmp_path)) == len(grid) + 4
    summary = json.loads((out / "summary.json").read_text())
    for c in summary["cells"]:
        g = grid[(grid["order"] == c["order"]) & (grid["schedule"] == c["schedule"]) & (grid["steps"] == c["steps"])]
        fid = g.sort_values("seed")["fid"].to_numpy()
        assert c["mean"] == pytest.approx(fid.mean())
        assert c["half"] == pytest.approx(stats.t.ppf(0.975, len(fid) - 1) * fid.std(ddof=1) / np.sqrt(len(fid)))
        if c["order"] != "confidence":
            conf = grid[(grid["order"] == "confidence") & (grid["schedule"] == c["schedule"]) &
                        (grid["steps"] == c["steps"])].sort_values("seed")["fid"].to_numpy()
            assert c["diff_vs_confidence"] == pytest.approx((fid - conf).mean())
    md = (out / "order_ablation.md").read_text()
    assert "Halton" in md and "against the confidence order" in md
