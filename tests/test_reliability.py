"""Bad input, generated: passwords over the full character set never reach an output, and
random settings and options either load or give the suite's one-line error."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import signal
import sqlite3

import mlflow
import pytest
import yaml
from helpers import SMOKE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskgit_lab import edit, evaluate, sample, tracking, train
from maskgit_lab.bounds import MAX_COUNT, SEED_MAX
from maskgit_lab.config import ExperimentConfig, load_config, stored_dict, to_dict
from maskgit_lab.errors import ConfigError, cli_errors, deferred_interrupts
from maskgit_lab.eval import evaluator
from maskgit_lab.io import atomic_write_text
from maskgit_lab.process import redact_log_records
from maskgit_lab.sweeps import (
    choice_temperature,
    comparison,
    order_ablation,
    schedule_ablation,
    tune_sampler,
)

TEXT = st.characters(blacklist_categories=("Cs",))  # every character a Python string holds
COMMON = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run(main, argv) -> tuple[int, str]:
    """Run a command in this process: (exit status, everything it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue()


def leaked(password: str, shown: str, baseline: str) -> set[str]:
    """Fragments (2 characters or more) of ``password`` in ``shown`` that the same output made
    with another password (``baseline``) does not also hold."""
    frags = {password[i:j] for i in range(len(password)) for j in range(i + 2, len(password) + 1)}
    return {f for f in frags if f in shown and f not in baseline}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow client on a SQLite store, and an experiment in it."""
    tmp = tmp_path_factory.mktemp("store")
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return client, tracking.experiment_id(client, "redact", (tmp / "art").as_uri())


def outputs(user: str, password: str, tmp_path, store) -> str:
    """Every place that shows a tracking or storage URL, made with this password."""
    url = f"postgresql://{user}:{password}@127.0.0.1:1/optuna"
    http = f"http://{user}:{password}@127.0.0.1:1"
    runs = tmp_path / "runs"
    shown = []
    # error lines: an unreachable Optuna storage, an unreachable MLflow server
    shown.append(run(schedule_ablation.main, ["--config", SMOKE, "--storage", url, f"runs_dir={runs}"])[1])
    shown.append(run(train.main, ["tokenizer", "--config", SMOKE, f"mlflow_uri={http}", f"runs_dir={runs}"])[1])
    # the logged and stored config, MLflow params and tags, a written summary, a log record
    cfg = load_config(SMOKE, [f"mlflow_uri={http}", f"runs_dir={runs}"])
    shown += [yaml.safe_dump(tracking.logged_config(cfg)), str(stored_dict(cfg))]
    client, exp = store
    run_id = client.create_run(exp).info.run_id
    tracking._log_params(client, run_id, {"storage": url, "tracking": http})
    tracking.log_batch(client, run_id, tags={"storage": url})
    shown.append(str(client.get_run(run_id).data))
    summary = atomic_write_text(tmp_path / "summary.md", f"Optuna study in {url}; MLflow at {http}\n")
    shown.append(summary.read_text())
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    log = logging.getLogger("optuna.redact-test")
    log.addHandler(handler)
    try:
        log.warning("trial failed: cannot reach %s", url)
        try:
            raise RuntimeError(f"connection to {url} refused")
        except RuntimeError:
            log.exception("storage error")
    finally:
        log.removeHandler(handler)
    shown.append(records.getvalue())
    return "\n".join(shown)


@COMMON
@given(user=st.text(TEXT, min_size=1, max_size=8).filter(lambda u: "@" not in u and ":" not in u),
       password=st.text(TEXT, min_size=2, max_size=16))
def test_no_output_shows_a_fragment_of_a_password(user, password, tmp_path_factory, store):
    redact_log_records()
    tmp = tmp_path_factory.mktemp("redact")
    shown = outputs(user, password, tmp / "a", store)
    baseline = outputs(user, "\x00\x00", tmp / "b", store)
    assert not leaked(password, shown, baseline), (password, leaked(password, shown, baseline))


def test_a_password_with_url_characters_is_hidden_whole(capsys, tmp_path):
    for password in ("pa/ss", "p@ss", "a:b#c?d%e", "pässwörd", "%2F%40"):
        code, shown = run(schedule_ablation.main, ["--config", SMOKE, "--storage",
                                                   f"postgresql://alice:{password}@127.0.0.1:1/optuna",
                                                   f"runs_dir={tmp_path}"])
        assert code == 2 and shown.startswith("error: ") and shown.count("\n") == 1, shown
        assert "alice:***@127.0.0.1:1/optuna" in shown and password not in shown, shown
    assert not list(tmp_path.iterdir()), "nothing is written before the storage is reached"


# ---- settings: every override either loads or is one ConfigError

def leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


KEYS = leaves(to_dict(ExperimentConfig()))
VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", ".inf", "1e-3", "1E-4", ".5", "5.", "", "[]", "[1, 2]", "{}", "null",
                     "true", "~", "'quoted'", "1e400", "0x10", "1_000"]),
    st.text(TEXT, max_size=12),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(key=st.sampled_from(KEYS + ["not_a_key", "sweep.bogus", "transformer_train"]), value=VALUES)
def test_any_override_loads_or_is_one_config_error(key, value):
    try:
        cfg = load_config(SMOKE, [f"{key}={value}"])
    except ConfigError as exc:
        assert str(exc).strip()
        return
    # what loaded keeps the bounds (settings typed int or float; 'devices' and the like are Lightning's)
    typed = {k for k, v in flat(to_dict(ExperimentConfig())).items() if type(v) in (int, float)}
    for k, v in flat(to_dict(cfg)).items():
        if isinstance(v, bool) or k.split("[")[0] not in typed | {"sweep.seeds", "sweep.steps"}:
            continue
        if isinstance(v, int):
            assert 0 <= v <= (SEED_MAX if "seed" in k.rsplit(".", 1)[-1] else MAX_COUNT), (k, v)
        if isinstance(v, float):
            assert v == v and abs(v) != float("inf"), (k, v)


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, list | tuple):
            out.update({f"{prefix}{k}[{i}]": x for i, x in enumerate(v)})
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("text, message", [
    ("name: a\nname: b\n", r"key 'name' is given twice \(lines 1 and 2\)"),
    ("transformer_train:\n  batch_size: 32\nname: x\ntransformer_train:\n  warmup_steps: 2\n",
     r"key 'transformer_train' is given twice \(lines 1 and 4\)"),
    ("sweep:\n  n: 10\n  n: 20\n", r"key 'n' is given twice \(lines 2 and 3\)"),
])
def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("written, value", [("1e-3", 1e-3), ("1E-4", 1e-4), (".5", 0.5), ("5.", 5.0)])
def test_numbers_as_people_write_them(tmp_path, written, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"transformer_train:\n  lr: {written}\n")
    assert load_config(path).transformer_train.lr == value
    assert load_config(None, [f"transformer_train.lr={written}"]).transformer_train.lr == value


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".", "", "x\\y", "café/.."])
def test_a_name_is_never_a_path(name):
    with pytest.raises(ConfigError, match="is not a name"):
        load_config(SMOKE, [f"name={name}"])


# ---- every command's options: a value either parses or is the one-line error

COMMANDS = {"train": (train.main, ["tokenizer"]), "sample": (sample.main, []), "edit": (edit.main, []),
            "evaluate": (evaluate.main, []), "evaluator": (evaluator.main, []),
            "schedule_ablation": (schedule_ablation.main, []), "order_ablation": (order_ablation.main, []),
            "choice_temperature": (choice_temperature.main, []), "tune_sampler": (tune_sampler.main, []),
            "comparison": (comparison.main, [])}


def options(main, head) -> tuple[list[str], list[str]]:
    """(the options a command's --help lists, argv that ends it before any work: a config and a
    checkpoint that do not exist, where it takes them)."""
    code, text = run(main, [*head, "--help"])
    assert code == 0, text
    found = set(re.findall(r"(--[a-z][a-z0-9-]+)", text)) - {"--help"}
    tail = [x for opt, path in (("--config", "/nonexistent/c.yaml"), ("--checkpoint", "/nonexistent/m.pt"))
            if opt in found for x in (opt, path)]
    return sorted(found - {"--config", "--checkpoint"}), tail


PARSED = {name: options(main, head) for name, (main, head) in COMMANDS.items()}
OPTIONS = [(name, opt) for name, (opts, _) in PARSED.items() for opt in opts]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(which=st.sampled_from(OPTIONS), value=VALUES)
def test_any_option_value_is_parsed_or_one_line(which, value):
    name, opt = which
    main, head = COMMANDS[name]
    code, shown = run(main, [*head, opt, value, *PARSED[name][1]])
    assert code == 2, (code, shown)
    lines = [x for x in shown.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown


def test_bounds_on_the_command_line_and_in_the_config():
    code, shown = run(sample.main, ["--checkpoint", "x", "--seed", "99999999999999999999999"])
    assert code == 2 and "--seed=99999999999999999999999 is out of range: it must lie in 0..4294967295" in shown
    code, shown = run(sample.main, ["--checkpoint", "x", "--cfg-weight", "inf"])
    assert code == 2 and "--cfg-weight=inf must be a finite number" in shown
    with pytest.raises(ConfigError, match=r"tokenizer_train.seed=-1 is out of range: it must lie in 0..4294967295"):
        load_config(SMOKE, ["tokenizer_train.seed=-1"])
    with pytest.raises(ConfigError, match=r"transformer_train.max_steps=2000000000 is out of range"):
        load_config(SMOKE, ["transformer_train.max_steps=2000000000"])
    with pytest.raises(ConfigError, match=r"sampling.guidance_weight=nan must be a finite number"):
        load_config(SMOKE, ["sampling.guidance_weight=.nan"])


def test_stores_are_checked_before_any_work(tmp_path):
    code, shown = run(train.main, ["tokenizer", "--config", SMOKE, "runs_dir=/sys/maskgit-runs"])
    assert code == 2 and "runs_dir /sys/maskgit-runs cannot be written" in shown, shown
    runs = tmp_path / "runs"
    code, shown = run(schedule_ablation.main, ["--config", SMOKE, f"runs_dir={runs}",
                                               "mlflow_uri=http://bob:top/secret@127.0.0.1:1"])
    assert code == 2 and "cannot use the MLflow tracking store 'http://bob:***@127.0.0.1:1'" in shown, shown
    assert "top" not in shown and "secret" not in shown
    assert not runs.exists(), "nothing written before the store answered"


def test_model_files_hold_no_tracking_uri():
    cfg = load_config(SMOKE, ["mlflow_uri=http://bob:hunter22@127.0.0.1:1"])
    assert stored_dict(cfg)["mlflow_uri"] == ""
    assert "hunter22" not in str(tracking.logged_config(cfg))


def test_mlflow_params_are_stored_redacted(tmp_path):
    url = "postgresql://u:s3cr3t@h/db"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracking.experiment_id(client, "x", (tmp_path / "a").as_uri())
    rid = client.create_run(exp).info.run_id
    tracking._log_params(client, rid, {"storage": url})
    with sqlite3.connect(tmp_path / "m.db") as con:
        values = [v for (v,) in con.execute("SELECT value FROM params")]
    assert values == ["postgresql://u:***@h/db"]


@pytest.mark.slow  # a training in a subprocess, interrupted
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_in_training_is_one_line(fmnist_dir, tmp_path, signum, code, word):
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "maskgit_lab.train", "tokenizer", "--config", SMOKE,
           f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={runs}", "tokenizer_train.max_steps=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list(runs.rglob("lightning")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3)  # inside the training loop
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"{word}: "), err[-2000:]
    assert "Traceback" not in err
    store = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (run,) = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert run.info.status in ("FAILED", "KILLED"), run.info.status


def mlflow_work(runs, sweep: str) -> int:
    """What a sweep and a training do to MLflow, as one command: a sweep's parent run and a
    cell, then a training run."""
    cfg = load_config(SMOKE, [f"runs_dir={runs}"])

    @cli_errors
    def command() -> int:
        log = tracking.SweepLog(cfg, f"schedule_ablation.{sweep}", "schedule_ablation", "ablation", {"n": 8})
        log.cell("linear-4-0", "linear T=4 seed=0", {"schedule": "linear"}, lambda run_id: {"fid": 1.0})
        log.end("FINISHED", {"best_fid": 1.0})
        logger = tracking.mlflow_logger(cfg, "transformer-linear", stage="transformer")
        logger.log_metrics({"val_loss": 1.0}, step=1)
        logger.finalize("success")
        return 0

    return command()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_signal_at_any_tracking_call_leaves_no_run_running(tmp_path, monkeypatch, when):
    """SIGTERM just before, or just after, each MLflow call a sweep and a training make (as when
    it arrives while a run is being created): the command ends `terminated` (143) and every
    run it created ends, none left RUNNING."""
    calls: list[str] = []
    kill_at = [-1]

    def wrap(name, real):
        def call(self, *args, **kwargs):
            calls.append(name)
            hit = len(calls) - 1 == kill_at[0]
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGTERM)
            out = real(self, *args, **kwargs)
            if hit and when == "after":
                os.kill(os.getpid(), signal.SIGTERM)
            return out
        return call

    for name in dir(mlflow.MlflowClient):
        real = getattr(mlflow.MlflowClient, name)
        if not name.startswith("_") and inspect.isfunction(real):
            monkeypatch.setattr(mlflow.MlflowClient, name, wrap(name, real))
    runs = tmp_path / "runs"
    assert mlflow_work(runs, "first") == 0  # creates the store and its experiments
    calls.clear()
    assert mlflow_work(runs, "second") == 0
    total = len(calls)
    assert calls.count("create_run") == 3 and total > 20, calls
    store = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    for k in range(total):
        calls.clear()
        kill_at[0] = k
        with pytest.raises(SystemExit) as exit_:
            mlflow_work(runs, f"k{k}")  # a new sweep each time: every call is made again
        kill_at[0] = -1
        assert exit_.value.code == 143, f"signal {when} call {k} ({calls[k]})"
        left = [(r.info.run_name, r.data.tags.get("sweep_id")) for r in store.search_runs(
            [e.experiment_id for e in store.search_experiments()], "attributes.status = 'RUNNING'")]
        assert not left, f"signal {when} call {k} ({calls[k]}): {left} left RUNNING"


def test_a_signal_waits_for_the_block_and_a_second_one_does_not():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the first")
        done.append("after the block")
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the second")
    assert done == ["after the first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
