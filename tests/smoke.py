"""What the tests share: the smoke preset and the arguments of a sweep run on it."""

from __future__ import annotations

SMOKE = "experiments/fmnist_smoke.yaml"  # the default's code path on a few hundred images


def sweep_args(trained, tmp_path, *extra: str) -> list[str]:
    """A sweep on the ``trained`` smoke models, with its own Optuna, MLflow and results under tmp_path."""
    overrides, _ = trained
    return ["--config", SMOKE, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out-dir",
            str(tmp_path / "results"), *overrides, f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def model_path(overrides: list[str], kind: str = "transformer", *extra: str):
    """The model file of ``kind`` that the smoke preset with these overrides trains (or reuses)."""
    from maskgit_lab.config import load_config
    from maskgit_lab.identity import model_file

    return model_file(load_config(SMOKE, [*overrides, *extra]), kind)


def private_copy(trained, tmp_path):
    """(overrides, experiment folder) of a copy of the ``trained`` runs folder, for a test that
    changes files in it (the session's own stays as it is for the other tests)."""
    import shutil
    from pathlib import Path

    overrides, root = trained
    runs = Path(tmp_path) / "runs"
    shutil.copytree(root.parent, runs, ignore=shutil.ignore_patterns("mlflow.db", "optuna.db", "mlartifacts"))
    return [o for o in overrides if not o.startswith("runs_dir=")] + [f"runs_dir={runs}"], runs / root.name
