"""Every notebook executes top to bottom on the smoke preset (so they cannot rot), and is
committed with its outputs stripped."""

import os
import shlex
from pathlib import Path

import nbformat
import pytest
from helpers import SMOKE, private_copy
from nbclient import NotebookClient

from maskgit_lab.sweeps import schedule_ablation

NOTEBOOKS = sorted(Path("notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_outputs_are_stripped():
    assert len(NOTEBOOKS) >= 3
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path}: outputs not stripped"


@pytest.fixture(scope="module")
def swept(trained_once, tmp_path_factory):
    """A copy of the trained models with the smoke ablation run on it, shared by the notebooks."""
    overrides, root = private_copy(trained_once, tmp_path_factory.mktemp("swept"))
    assert schedule_ablation.main(["--config", SMOKE, *overrides, "--out-dir", str(root.parent / "out")]) == 0
    return overrides


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, swept, monkeypatch):
    monkeypatch.setenv("MASKGIT_NB_CONFIG", SMOKE)
    monkeypatch.setenv("MASKGIT_NB_OVERRIDES", shlex.join(swept))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
