"""``run_grid`` against the states other workers leave in a shared study: a trial caught
between two ``suggest`` calls (only some of its cell's parameters set), alive or killed, and
a killed trial that had chosen its whole cell. Every cell must end COMPLETE exactly once."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from maskgit_lab.sweeps import optuna_study as S

SPACE = {"schedule": ["cosine", "linear"], "T": [4, 8], "seed": [0, 1]}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def study_at(tmp_path):
    storage = S.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)
    return S.grid_study("grid", storage, SPACE)


def other_worker_trial(study, n_params: int, pid: int) -> int:
    """A trial as another worker leaves it: RUNNING, marked with its host and pid, with only
    the first ``n_params`` of its cell's parameters suggested so far."""
    trial = study.ask()
    trial.set_user_attr(S.WORKER_HOST, S.socket.gethostname())
    trial.set_user_attr(S.WORKER_PID, pid)
    params = {name: trial.suggest_categorical(name, SPACE[name]) for name in list(SPACE)[:n_params]}
    if n_params == len(SPACE):  # as run_grid's objective does once the cell is whole
        trial.set_user_attr(S.CELL, S.cell_key(params, list(SPACE)))
    return trial.number


def unclaimed_trial(study) -> int:
    """A trial as a worker killed inside Optuna's ``ask()`` leaves it: RUNNING, with no mark."""
    return optuna.Study(study_name=study.study_name, storage=study._storage).ask().number


def run_all(study) -> list[dict]:
    ran = []

    def run_cell(trial, params):
        ran.append(params)
        return float(params["T"])

    S.run_grid(study, SPACE, run_cell, poll_s=0.01, log=lambda _: None)
    return ran


def completed_cells(study) -> Counter:
    names = list(SPACE)
    return Counter(S.cell_key(t.params, names)
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_fresh_grid_runs_every_cell_once(tmp_path):
    study = study_at(tmp_path)
    ran = run_all(study)
    assert len(ran) == 8
    counts = completed_cells(study)
    assert len(counts) == 8 and set(counts.values()) == {1}


@pytest.mark.parametrize("n_params", [1, 2])
def test_a_dead_worker_killed_between_suggestions(tmp_path, n_params):
    """The killed trial holds a partial cell: it is failed, not re-queued half-specified (which
    GridSampler refuses), and its cell is queued again whole."""
    study = study_at(tmp_path)
    killed = other_worker_trial(study, n_params, dead_pid())
    run_all(study)
    counts = completed_cells(study)
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert study.get_trials()[killed].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))


def test_a_live_worker_between_suggestions_does_not_break_the_duplicate_check(tmp_path):
    """Another worker's RUNNING trial with a partial cell is not a cell yet: skipping it (not a
    KeyError) while this worker runs the grid. Here the other worker never finishes, so this
    worker runs every cell itself."""
    study = study_at(tmp_path)
    other = other_worker_trial(study, 1, S.os.getppid())  # a live process on this host
    run_all(study)
    counts = completed_cells(study)
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert study.get_trials()[other].state == TrialState.RUNNING


def test_a_dead_worker_with_a_whole_cell_is_retried_once(tmp_path):
    study = study_at(tmp_path)
    killed = other_worker_trial(study, len(SPACE), dead_pid())
    cell = S.cell_key(study.get_trials()[killed].params, list(SPACE))
    ran = run_all(study)
    assert len(ran) == 8
    retries = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert S.cell_key(retries[0].params, list(SPACE)) == cell
    assert completed_cells(study)[cell] == 1


def test_partial_params_have_no_cell_key():
    assert S.cell_key({"schedule": "cosine", "T": 4, "seed": 0}, list(SPACE)) == "schedule=cosine,T=4,seed=0"
    assert S.full_cell({"schedule": "cosine"}, list(SPACE)) is None
    assert S.full_cell({"schedule": "cosine", "T": 4, "seed": 0, "x": 1}, list(SPACE)) == "schedule=cosine,T=4,seed=0"


def test_a_worker_killed_inside_ask_leaves_no_running_trial(tmp_path, monkeypatch):
    """A trial created by ``ask()`` whose worker died before claiming it (no mark, no heartbeat,
    no parameters) is kept while it is young, as a live worker's would be, and failed once it is
    older than ``UNCLAIMED_S``: the grid completes and nothing is left RUNNING."""
    study = study_at(tmp_path)
    orphan = unclaimed_trial(study)
    assert S.reap_dead_trials(study) == []
    assert study.get_trials()[orphan].state == TrialState.RUNNING

    monkeypatch.setattr(S, "UNCLAIMED_S", 0.2)
    S.run_grid(study, SPACE, lambda trial, params: 0.0, poll_s=0.05, log=lambda _: None)
    counts = completed_cells(study)
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert study.get_trials()[orphan].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))


def test_a_finished_grid_waits_for_an_unclaimed_trial_to_expire(tmp_path, monkeypatch):
    study = study_at(tmp_path)
    run_all(study)
    orphan = unclaimed_trial(study)  # every cell is done; a worker dies as it creates one more trial
    monkeypatch.setattr(S, "UNCLAIMED_S", 0.3)
    said = []
    S.run_grid(study, SPACE, lambda trial, params: pytest.fail("no cell is left to run"), poll_s=0.05,
               log=said.append)
    assert study.get_trials()[orphan].state == TrialState.FAIL
    assert len(said) == 1 and "1 unclaimed trial(s)" in said[0]
    assert len(completed_cells(study)) == 8


def test_settle_reaps_a_trial_left_in_a_grid_after_every_worker_had_left_it(tmp_path, monkeypatch):
    """A worker that ran behind the others dies inside the first grid after they all moved on to
    the second: ``settle`` (what a sweep does after its last grid) fails its trial, claimed or
    not, without running any cell."""
    study = study_at(tmp_path)
    run_all(study)
    claimed = other_worker_trial(study, n_params=0, pid=dead_pid())
    unclaimed = unclaimed_trial(study)
    monkeypatch.setattr(S, "UNCLAIMED_S", 0.3)
    said = []
    S.settle([(study, SPACE)], poll_s=0.05, log=said.append)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[claimed] == states[unclaimed] == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(completed_cells(study)) == 8 and len(said) == 1


@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_at_any_storage_call_leaves_no_trial_running(tmp_path, monkeypatch, when):
    """Ctrl-C just before, or just after, each storage call a worker makes up to its first
    cell's work (inside ``ask()`` included): the worker stops and no trial is left RUNNING."""
    storage = S.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path)
    calls: list[str] = []
    kill_at = [-1]

    def wrap(name, real):
        def call(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():  # the heartbeat
                return real(*args, **kwargs)
            calls.append(name)
            hit = len(calls) - 1 == kill_at[0]
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGINT)
            out = real(*args, **kwargs)
            if hit and when == "after":
                os.kill(os.getpid(), signal.SIGINT)
            return out
        return call

    for name, real in inspect.getmembers(storage, inspect.ismethod):  # Optuna's cache calls private ones too
        if not name.startswith("__"):
            monkeypatch.setattr(storage, name, wrap(name, real))
    first_cell = []

    def run_cell(trial, params):
        first_cell.append(len(calls))
        return 0.0

    study = S.grid_study("count", storage, SPACE)
    calls.clear()
    S.run_grid(study, SPACE, run_cell, poll_s=0.01, log=lambda _: None)
    total = first_cell[0]
    assert "_create_new_trial" in calls[:total], calls
    for k in range(total):
        study = S.grid_study(f"k{k}", storage, SPACE)
        calls.clear()
        kill_at[0] = k
        with pytest.raises(KeyboardInterrupt):
            S.run_grid(study, SPACE, run_cell, poll_s=0.01, log=lambda _: None)
        kill_at[0] = -1
        left = study.get_trials(states=(TrialState.RUNNING,))
        assert not left, f"Ctrl-C {when} storage call {k} ({calls[k]}): trial {left[0].number} left RUNNING"
