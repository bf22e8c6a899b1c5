"""The multi-machine sweep with the real parts, on 127.0.0.1: a PostgreSQL server (the Optuna
study and the MLflow backend) and ``mlflow server``; three workers of the smoke ablation, one
SIGKILLed mid-cell; then every cell is complete once in the study, FINISHED once in MLflow,
and once in the table."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from helpers import SMOKE

from maskgit_lab.config import load_config
from maskgit_lab.eval.evaluator import train_evaluator

ROOT = Path(__file__).resolve().parents[1]


def pg_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture()
def postgres(tmp_path):
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    pytest.importorskip("psycopg2", reason="the [postgres] extra (make test installs it)")
    # a folder of its own the postgres user can reach (pytest's tmp_path is private to root)
    base = Path(tempfile.mkdtemp(prefix="maskgit-pg-"))
    base.chmod(0o755)
    data, sock = base / "pgdata", base / "pgsock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run(as_postgres([str(bindir / cmd[0]), *cmd[1:]]), check=True,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    run("initdb", "-D", str(data), "-U", "sweep", "--auth=trust")
    run("pg_ctl", "-D", str(data), "-w", "-l", str(base / "pg.log"), "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start")
    try:
        for db in ("optuna", "mlflow"):
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "sweep", db)
        yield f"postgresql://sweep@127.0.0.1:{port}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def mlflow_server(postgres, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"{postgres}/mlflow", "--default-artifact-root", (tmp_path / "artifacts").as_uri(),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
def test_three_workers_one_killed_on_postgres_and_mlflow_server(trained, postgres, mlflow_server, tmp_path):
    overrides, _ = trained
    train_evaluator(load_config(SMOKE, overrides))  # shared by the workers: made before they start
    args = [sys.executable, "sweeps/schedule_ablation.py", "--config", SMOKE, "--mode", "decode",
            "--storage", f"{postgres}/optuna", "--out-dir", str(tmp_path / "results"), *overrides,
            f"mlflow_uri={mlflow_server}", "sweep.seeds=[0,1,2]"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    workers = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env) for _ in range(3)]
    study_url = f"{postgres}/optuna"

    def complete() -> int:
        try:
            return sum(len(optuna.load_study(study_name=s.study_name, storage=study_url).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,))) for s in optuna.get_all_study_summaries(study_url))
        except Exception:  # noqa: BLE001 - the schema is being created
            return 0

    while complete() < 3 and time.time() - start < 300:
        time.sleep(0.5)
    victim = workers[0]
    assert victim.poll() is None, "the first worker ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    outputs = [w.communicate(timeout=600)[0] for w in workers[1:]]
    assert [w.returncode for w in workers[1:]] == [0, 0], "\n\n".join(o[-4000:] for o in outputs)
    cells = 3 * 2 * 3 + 2 * 3  # schedules x steps x seeds, and the two reference rows x seeds

    keys = []
    for s in optuna.get_all_study_summaries(study_url):
        study = optuna.load_study(study_name=s.study_name, storage=study_url)
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            keys.append(tuple(sorted(t.params.items())))
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(keys) == len(set(keys)) == cells, "every cell complete exactly once in the study"

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.sweep_role = 'cell'")
    finished = runs[runs["status"] == "FINISHED"]["tags.cell"]
    assert len(finished) == len(set(finished)) == cells, "every cell FINISHED exactly once in MLflow"
    table = pd.read_csv(tmp_path / "results" / "schedule_ablation_cells.csv")
    assert len(table) == cells, "every cell once in the table"
    print(f"three workers, one killed: {cells} cells in {time.time() - start:.0f} s")
