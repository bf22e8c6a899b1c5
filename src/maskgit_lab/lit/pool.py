"""Train several transformers at once on a multi-core CPU: one process per model, the cores
split between them.

Small transformers' matrix products are too short to keep several threads busy, so
trainings side by side on one core each outrun the same trainings one after the other on
every core (docs/speed.md). ``train_workers: auto`` does this on a CPU when several models
are missing; ``train_workers=1`` trains them one after the other in the calling process, as
a GPU always does.

Each worker is ``python -m maskgit_lab.lit.pool`` reading its experiment (a ``to_dict`` tree)
on standard input and running :func:`maskgit_lab.lit.stages.train_transformer`, so a worker
resumes, reuses and logs exactly as ``python -m maskgit_lab.train transformer`` does. Its
output comes back line by line, prefixed with the model's name.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import torch

from maskgit_lab.config import ExperimentConfig, from_dict, to_dict
from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.hardware import training_device
from maskgit_lab.lit.stages import train_transformer


def plan_workers(cfg: ExperimentConfig, n_models: int, cores: int | None = None) -> tuple[int, int]:
    """(processes, threads per process) to train ``n_models`` transformers with.

    ``auto``: on a single CPU machine, as many processes as there are cores (at most one per
    model), the cores shared out evenly; on a GPU, or across nodes, one (the calling process,
    with every thread). An integer caps the processes the same way.
    """
    cores = max(1, cores if cores is not None else torch.get_num_threads())
    if n_models < 2:
        return 1, cores
    requested = cfg.train_workers
    if requested == "auto":
        if training_device(cfg.accelerator) != "cpu" or cfg.num_nodes > 1:
            return 1, cores
        requested = cores
    workers = max(1, min(int(requested), n_models, cores))
    return workers, max(1, cores // workers)


@dataclass
class _Worker:
    name: str
    proc: subprocess.Popen
    reader: threading.Thread
    tail: list[str]


_print_lock = threading.Lock()


def _relay(name: str, stream, tail: list[str]) -> None:
    """Print a worker's output with its name in front; keep its last lines for errors.
    Progress bars redraw with carriage returns: each redraw becomes a line."""

    def emit(raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if line:
            tail[:] = [*tail[-19:], line]
            with _print_lock:
                print(f"[{name}] {line}", flush=True)

    buf = b""
    while chunk := stream.read1(4096):
        *lines, buf = (buf + chunk).replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            emit(raw)
    emit(buf)


def _die_with_parent() -> None:
    """In the worker, before it runs: Linux sends it SIGTERM when the process that started it
    dies (a killed sweep leaves no training behind to race its re-run)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start(name: str, cfg: ExperimentConfig, threads: int, log: bool) -> _Worker:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MASKGIT_TRAIN_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskgit_lab.lit.pool", *([] if log else ["--no-mlflow"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        preexec_fn=_die_with_parent,
    )
    # the experiment goes through a pipe, not a file: it may name a tracking server's password
    proc.stdin.write(json.dumps(to_dict(cfg)).encode())
    proc.stdin.close()
    tail: list[str] = []
    reader = threading.Thread(target=_relay, args=(name, proc.stdout, tail), daemon=True)
    reader.start()
    return _Worker(name, proc, reader, tail)


def _reason(w: _Worker) -> str:
    """The worker's own one-line error, else its last line."""
    errors = [line for line in w.tail if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return w.tail[-1] if w.tail else f"exit status {w.proc.returncode}"


def train_in_parallel(jobs: list[tuple[str, ExperimentConfig]], workers: int, threads: int, log: bool) -> None:
    """Train each (name, config) in its own process, ``workers`` at a time with ``threads``
    threads each. After a failure no new training starts, the running ones finish (their
    models are kept), and a ConfigError names every model that failed and why. On Ctrl-C the
    workers stop; each resumes from its last checkpoint on the next run."""
    print(f"training {len(jobs)} transformers, {workers} at a time with {threads} thread"
          f"{'s' if threads > 1 else ''} each (train_workers={workers}; train_workers=1 trains them one "
          "after the other)", flush=True)
    pending, running, failed = list(jobs), [], []
    try:
        while pending or running:
            while pending and len(running) < workers and not failed:
                name, cfg = pending.pop(0)
                running.append(_start(name, cfg, threads, log))
            time.sleep(0.2)
            for w in [w for w in running if w.proc.poll() is not None]:
                running.remove(w)
                w.reader.join()
                if w.proc.returncode != 0:
                    failed.append(w)
            if failed and not running:
                break
    finally:
        for w in running:  # interrupted: stop the rest (Lightning keeps their last checkpoints)
            w.proc.terminate()
        for w in running:
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
    if failed:
        raise ConfigError("; ".join(f"training {w.name} failed: {_reason(w)}" for w in failed))


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """A worker: the experiment as JSON on standard input, ``--no-mlflow`` to skip logging."""
    argv = sys.argv[1:] if argv is None else argv
    threads = int(os.environ.get("MASKGIT_TRAIN_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_float32_matmul_precision("high")
    train_transformer(from_dict(json.loads(sys.stdin.read())), log="--no-mlflow" not in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
