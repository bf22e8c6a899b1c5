"""Everything Optuna: the sweeps' studies, persistent, resumable, safe with several workers.

Storage: a SQLite file under ``runs/`` by default, any SQLAlchemy URL (PostgreSQL, MySQL)
with ``--storage`` so workers on several machines share one study. Heartbeats are on, so
a trial whose worker died (SIGKILL, lost machine) is noticed: on the same machine at once
(its process is gone), elsewhere when its heartbeat is older than the grace period. Such a
trial is marked FAIL and re-queued exactly once (only the worker whose FAIL transition
succeeds re-queues it). ``WorkerStudy.ask()`` marks a trial with its worker as it creates
it (Ctrl-C and SIGTERM wait for the mark); a worker SIGKILLed between the two leaves a trial
no heartbeat or pid can expire: such an unclaimed trial is failed once it is ``UNCLAIMED_S``
old (it holds no parameters, so nothing is re-queued). Its age is read against this machine's clock, so the
workers' clocks must agree to well within that.

Grid sweeps (``run_grid``): every cell of the grid ends COMPLETE exactly once. Fresh cells
come from Optuna's GridSampler; a trial that lands on a cell already complete or being run
by a lower-numbered trial prunes itself before doing any work (this only happens when
workers race), and cells whose trial failed are re-queued on the next run.

The MLflow side (one nested run per cell) is ``maskgit_lab.tracking``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from maskgit_lab.errors import ConfigError, deferred_interrupts
from maskgit_lab.io import sqlite_init_lock
from maskgit_lab.redact import reason, redact_url, register

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweeps print their own progress lines

HEARTBEAT_S = 20
GRACE_S = 90
UNCLAIMED_S = GRACE_S  # a live worker claims its trial within milliseconds of creating it
WORKER_HOST, WORKER_PID = "worker_host", "worker_pid"
CELL = "cell"  # set once a trial has suggested every parameter of its cell


def storage_url(url: str | None, runs_dir: str | Path) -> str:
    register(url)
    return url or f"sqlite:///{(Path(runs_dir) / 'optuna.db').resolve()}"


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue a dead worker's trial with its parameters (a WAITING trial any worker pops).

    Only a trial that had chosen its whole cell (``CELL`` is set after the last ``suggest``):
    one killed between two suggestions holds part of a cell, which GridSampler refuses to
    complete; ``run_grid`` queues such a cell again whole, as it does any failed cell."""
    if CELL not in trial.user_attrs:
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in (WORKER_HOST, WORKER_PID)}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={**attrs, "retry_of": trial.number}))


def open_storage(url: str | None, runs_dir: str | Path) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats; a URL that cannot be opened is a one-line error."""
    url = storage_url(url, runs_dir)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with sqlite_init_lock(url), warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                failed_trial_callback=_retry,
            )
    except Exception as exc:  # noqa: BLE001 - any driver/URL error: say which URL and why
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)!r}: {reason(exc)}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unclaimed(t: FrozenTrial) -> bool:
    """RUNNING with no worker mark: its worker is inside ``ask()`` or died there."""
    return t.state == TrialState.RUNNING and WORKER_HOST not in t.user_attrs


def reap_dead_trials(study: optuna.Study) -> list[int]:
    """FAIL (and re-queue once) RUNNING trials whose worker is gone; returns their numbers."""
    storage = study._storage
    host, reaped, now = socket.gethostname(), [], datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _unclaimed(t):
            started = t.datetime_start or now
            if (now - started).total_seconds() <= UNCLAIMED_S:
                continue
        elif t.user_attrs.get(WORKER_HOST) != host or _alive(int(t.user_attrs.get(WORKER_PID, -1))):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                _retry(study, study._storage.get_trial(t._trial_id))
                reaped.append(t.number)
        except UpdateFinishedTrialError:
            pass  # another worker got there first
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # other machines: stale heartbeats (re-queued by the callback)
    return reaped


def mark_worker(trial: Trial) -> None:
    trial.set_user_attr(WORKER_HOST, socket.gethostname())
    trial.set_user_attr(WORKER_PID, os.getpid())


def cell_key(params: dict[str, Any], names: Sequence[str]) -> str:
    return ",".join(f"{n}={params[n]}" for n in names)


def grid_cells(space: dict[str, list]) -> list[dict[str, Any]]:
    """Every cell of a grid, as parameter dicts."""
    names = list(space)
    return [dict(zip(names, v, strict=True)) for v in itertools.product(*space.values())]


def full_cell(params: dict[str, Any], names: Sequence[str]) -> str | None:
    """The cell of a trial's parameters, or None while another worker is still between its
    ``suggest`` calls (GridSampler sets one parameter at a time)."""
    return cell_key(params, names) if all(n in params for n in names) else None


class _Grid(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not stop the study: ``run_grid`` decides."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D401
        return None


def run_grid(
    study: optuna.Study,
    space: dict[str, list],
    run_cell: Callable[[Trial, dict[str, Any]], float],
    poll_s: float = 5.0,
    log: Callable[[str], None] = print,
) -> None:
    """Run ``run_cell(trial, params)`` for every cell of ``space`` not yet COMPLETE.

    Returns when every cell is COMPLETE (waiting, if need be, for cells other workers are
    running). An exception in ``run_cell`` fails that trial and propagates.
    """
    names = list(space)
    cells = {cell_key(p, names): p for p in grid_cells(space)}
    if not isinstance(study.sampler, optuna.samplers.GridSampler):
        raise ValueError("run_grid needs a study created by grid_study()")

    def objective(trial: Trial) -> float:
        params = {n: trial.suggest_categorical(n, space[n]) for n in names}
        key = cell_key(params, names)
        trial.set_user_attr(CELL, key)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number != trial.number and full_cell(t.params, names) == key:
                if t.state == TrialState.COMPLETE or t.number < trial.number:
                    trial.set_user_attr("duplicate_of", t.number)
                    raise optuna.TrialPruned(f"{key} is already done or running (trial {t.number})")
        return run_cell(trial, params)

    waited = told_unclaimed = False
    while True:
        reap_dead_trials(study)
        trials = study.get_trials(deepcopy=False)
        state_of: dict[str, set] = {}
        for t in trials:
            if (key := full_cell(t.params, names)) is not None:
                state_of.setdefault(key, set()).add(t.state)
        done = {k for k, s in state_of.items() if TrialState.COMPLETE in s}
        busy = {k for k, s in state_of.items() if s & {TrialState.RUNNING, TrialState.WAITING}} - done
        todo = set(cells) - done - busy
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if done >= set(cells):
            unclaimed = sum(map(_unclaimed, trials))
            if not unclaimed:
                return
            if not told_unclaimed:  # a worker died inside ask(): fail its trial, do not leave it RUNNING
                log(f"every cell is done; waiting up to {UNCLAIMED_S} s for {unclaimed} unclaimed trial(s) "
                    "(a worker that died as it created a trial) to expire")
                told_unclaimed = True
            time.sleep(poll_s)
            continue
        if waiting or (todo and not study.sampler.is_exhausted(study)):
            try:
                study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
            except KeyboardInterrupt:
                fail_own_running(study)
                raise
            waited = False
        elif todo:  # cells whose trial failed earlier without a retry: queue them again
            for key in sorted(todo):
                study.enqueue_trial(cells[key])
        else:  # the remaining cells are running in other workers
            if not waited:
                log(f"waiting for {len(busy)} cell(s) running in other workers")
                waited = True
            time.sleep(poll_s)


def settle(grids: Sequence[tuple[optuna.Study, dict[str, list]]], poll_s: float = 5.0,
           log: Callable[[str], None] = print) -> None:
    """Look once more at grids this worker has finished, after its later grids: a worker that
    ran behind the others and died inside an earlier grid after they had all left it leaves a
    trial RUNNING there that no ``run_grid`` would reap. Each grid is settled as ``run_grid``
    settles its own end (dead workers' trials failed, an unclaimed one waited for until it
    expires); no cell runs, since every cell of a finished grid stays COMPLETE."""
    def finished(trial: Trial, params: dict[str, Any]) -> float:
        raise RuntimeError(f"cell {cell_key(params, list(params))} of a finished grid was asked to run again")

    for study, space in grids:
        run_grid(study, space, finished, poll_s=poll_s, log=log)


def fail_own_running(study: optuna.Study) -> None:
    """Mark this process's RUNNING trials FAIL (on Ctrl-C): no trial is left running with no
    worker; the next run re-queues their cells."""
    host, pid = socket.gethostname(), os.getpid()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(WORKER_HOST) == host and int(t.user_attrs.get(WORKER_PID, -1)) == pid:
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass


class WorkerStudy(optuna.Study):
    """A study whose trials carry their worker's mark (host, pid) from the step that creates
    them: Ctrl-C or SIGTERM during ``ask()`` waits until the mark is written, so the trial is
    this worker's to fail (``fail_own_running``), never left unclaimed."""

    def ask(self, fixed_distributions=None) -> Trial:
        with deferred_interrupts():
            trial = super().ask(fixed_distributions)
            mark_worker(trial)
        return trial


def open_study(name: str, storage: optuna.storages.RDBStorage, **kwargs) -> WorkerStudy:
    """Study ``name`` in ``storage``, created with ``kwargs`` (sampler, directions, pruner) if new."""
    with sqlite_init_lock(storage.url):
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, **kwargs)
    return WorkerStudy(study_name=name, storage=storage, sampler=study.sampler, pruner=study.pruner)


def grid_study(name: str, storage: optuna.storages.RDBStorage, space: dict[str, list]) -> WorkerStudy:
    return open_study(name, storage, sampler=_Grid(space, seed=0), direction="minimize")
