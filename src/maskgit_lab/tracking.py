"""MLflow set-up: a local SQLite store by default, telemetry off, artifacts under runs/."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from maskgit_lab.config import ExperimentConfig, to_dict

# Nothing phones home: set before mlflow (or dvc) is imported anywhere in the process.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists as strings), for MLflow params."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, list) else v
    return out


def artifact_root(cfg: ExperimentConfig) -> str:
    return (Path(cfg.runs_dir).resolve() / "mlartifacts").as_uri()


def mlflow_logger(cfg: ExperimentConfig, run_name: str, tags: dict[str, str] | None = None):
    """Lightning's MLFlowLogger on the experiment's store, with the resolved config logged."""
    from lightning.pytorch.loggers import MLFlowLogger

    Path(cfg.runs_dir).mkdir(parents=True, exist_ok=True)
    logger = MLFlowLogger(
        experiment_name=cfg.name,
        run_name=run_name,
        tracking_uri=cfg.tracking_uri,
        artifact_location=artifact_root(cfg) + f"/{cfg.name}",
        tags=tags,
    )
    logger.log_hyperparams(flatten(to_dict(cfg)))
    logger.experiment.log_text(logger.run_id, yaml.safe_dump(to_dict(cfg), sort_keys=False), "config.yaml")
    return logger
