"""What the tests share: the smoke preset and a sweep's arguments on it, the idx file writer
of the fixture dataset, and the package's import graph."""

from __future__ import annotations

import ast
import gzip
import struct
from pathlib import Path

import numpy as np

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
    """(overrides, experiment folder) of a copy of a trained runs folder, its stores included;
    the MLflow store's artifact locations are moved to the copy's own ``mlartifacts``."""
    import shutil
    import sqlite3

    overrides, root = trained
    runs = Path(tmp_path) / "runs"
    shutil.copytree(root.parent, runs)
    db = runs / "mlflow.db"
    if db.exists():
        old, new = root.parent.resolve().as_uri(), runs.resolve().as_uri()
        with sqlite3.connect(db) as con:
            con.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        con.close()
    return [o for o in overrides if not o.startswith("runs_dir=")] + [f"runs_dir={runs}"], runs / root.name


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format (magic 0x0000 08 ndim, big-endian dims), gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "maskgit_lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, known: set[str]) -> list[str]:
    """Package modules named by one import statement (``from pkg import sub`` names pkg.sub)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        out = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return out or ([node.module] if node.module in known else [])
    return []


def import_graph() -> dict[str, set[str]]:
    """Every import of a package module by another, at module level or inside functions."""
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            graph[m].update(t for t in imported(node, known) if t != m)
    return graph
