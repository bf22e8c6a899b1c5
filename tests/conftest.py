"""Shared fixtures: a small Fashion-MNIST-format dataset written as real idx .gz files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from smoke import SMOKE

from maskgit_lab import train


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format (magic 0x0000 08 ndim, big-endian dims), gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


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




@pytest.fixture(scope="session")
def trained(fmnist_dir, tmp_path_factory):
    """Train both smoke stages once (with MLflow logging); -> (overrides, experiment run folder)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    overrides = [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={runs}"]
    assert train.main(["all", "--config", SMOKE, *overrides]) == 0
    return overrides, runs / "fmnist_smoke"
