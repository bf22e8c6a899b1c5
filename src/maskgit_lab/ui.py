"""``make ui``: serve the MLflow UI over a local store, after printing each experiment's link.

The installed MLflow UI (3.x) opens an experiment on its GenAI overview unless the link says
``workflowType=machine_learning`` or the browser chose "Model training" in the sidebar, so the
links printed here (and by every sweep) carry it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from maskgit_lab.errors import ConfigError, cli_errors
from maskgit_lab.tracking import experiment_links

DEFAULT_STORE = "sqlite:///runs/mlflow.db"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend-store-uri", default=DEFAULT_STORE, help=f"a local store (default {DEFAULT_STORE})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    uri = args.backend_store_uri
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not os.path.isfile(path):
            raise ConfigError(f"no MLflow store at {path}: run a sweep or a training first "
                              f"(python sweeps/schedule_ablation.py), or pass --backend-store-uri")
        uri = "sqlite:///" + os.path.abspath(path)
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base}; each experiment's runs:")
    for name, url in experiment_links(uri, base):
        print(f"  {name}: {url}")
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    if mlflow is None:
        raise ConfigError("the mlflow command is not installed in this environment: run `make setup`")
    sys.stdout.flush()
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])
    return 0  # not reached: exec replaces the process


if __name__ == "__main__":
    raise SystemExit(main())
