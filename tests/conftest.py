"""Shared fixtures: a small Fashion-MNIST-format dataset written as real idx .gz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import SMOKE, private_copy, write_idx

from maskgit_lab import train
from maskgit_lab.config import load_config
from maskgit_lab.eval.evaluator import train_evaluator
from maskgit_lab.redact import forget


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose content depends on the class: a bright bar at a class-specific row."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 5 + 2 * c, 4:24] = 220
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fmnist")
    for split, n, seed in (("train", 600, 0), ("t10k", 120, 1)):
        x, y = make_images(n, seed)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return d


@pytest.fixture()
def smoke_overrides(fmnist_dir, tmp_path) -> list[str]:
    """Overrides that point the smoke preset at the fixture data and a private runs folder."""
    return [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={tmp_path / 'runs'}"]


def pytest_collection_modifyitems(items):
    """A test that needs the trained smoke models (it samples, evaluates or sweeps) is slow:
    `make test-fast` leaves it out."""
    for item in items:
        if "trained" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _one_command_per_process():
    """Each command runs in a process of its own; tests run many in this one, so the URLs one
    test registered with the redactor are forgotten before the next."""
    yield
    forget()


def _state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="session")
def trained_once(fmnist_dir, tmp_path_factory):
    """Train both smoke stages and the evaluator once (with MLflow logging); no test gets this
    folder itself, only a copy (``trained``)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    overrides = [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={runs}"]
    assert train.main(["all", "--config", SMOKE, *overrides]) == 0
    train_evaluator(load_config(SMOKE, overrides))
    return overrides, runs / "fmnist_smoke"


@pytest.fixture()
def trained(trained_once, tmp_path_factory):
    """(overrides, experiment run folder) of a private copy of the session's trained models, its
    MLflow and Optuna stores included: a test may add models, corrupt caches or log runs without
    changing what the next test sees. The session's folder is checked unchanged afterwards."""
    master = trained_once[1].parent
    before = _state(master)
    yield private_copy(trained_once, tmp_path_factory.mktemp("trained_copy"))
    after = _state(master)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test changed the session's trained runs folder: {changed[:10]}"
