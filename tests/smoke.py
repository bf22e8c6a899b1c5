"""What the tests share: the smoke preset and the arguments of a sweep run on it."""

from __future__ import annotations

SMOKE = "experiments/fmnist_smoke.yaml"  # the default's code path on a few hundred images


def sweep_args(trained, tmp_path, *extra: str) -> list[str]:
    """A sweep on the ``trained`` smoke models, with its own Optuna, MLflow and results under tmp_path."""
    overrides, _ = trained
    return ["--config", SMOKE, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out-dir",
            str(tmp_path / "results"), *overrides, f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]
