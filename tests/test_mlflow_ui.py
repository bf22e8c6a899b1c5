"""The MLflow UI as a person sees it: a smoke sweep's store served by `mlflow ui`, the links the
sweep printed opened in headless Chromium (Debian's ``chromium``), assertions on the rendered
page: the runs table (not the GenAI overview) with every cell's FID, and the Compare page."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from helpers import sweep_args

from maskgit_lab.sweeps import schedule_ablation

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
         "--virtual-time-budget=25000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it)."""
    profile = tmp_path / f"chromium-{time.monotonic_ns()}"
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow  # a sweep, an MLflow server and a browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is installed by `make test`")
def test_the_printed_links_open_on_the_cells_with_their_fid(trained, tmp_path, capsys):
    assert schedule_ablation.main(sweep_args(trained, tmp_path)) == 0
    out = capsys.readouterr().out
    links = dict(re.findall(r"MLflow.*?: (its cells by FID|the sweep's run|compare its \d+ cells): (\S+)", out))
    assert set(links) == {"its cells by FID", "the sweep's run", "compare its 12 cells"}, out[-2000:]
    port = free_port()
    printed = tmp_path / "ui.out"
    with printed.open("w") as out_file:  # `make ui`'s command: the experiments' links, then the server
        ui = subprocess.Popen([sys.executable, "-m", "maskgit_lab.ui", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)],
                              stdout=out_file, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base, timeout=2)
                break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "mlflow ui did not start"
                time.sleep(1)
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        cells = mlflow.search_runs(search_all_experiments=True,
                                   filter_string="tags.sweep_role = 'cell' and attributes.status = 'FINISHED'")
        assert len(cells) == 16
        experiments = dict(re.findall(r"^  (\S+): (\S+)$", printed.read_text(), re.M))
        assert set(experiments) == {"fmnist_smoke", "fmnist_smoke/schedule_ablation"}, printed.read_text()
        landing = rendered(experiments["fmnist_smoke/schedule_ablation"], tmp_path)
        assert "matching runs" in landing and "Detect Issues" not in landing, "the experiment opens on its runs"
        page = rendered(links["its cells by FID"].replace("http://127.0.0.1:5000", base), tmp_path,
                        tmp_path / "cells.png")
        assert "matching runs" in page and "Detect Issues" not in page, "the runs table, not the GenAI overview"
        for _, cell in cells.iterrows():
            assert cell["tags.mlflow.runName"] in page and repr(float(cell["metrics.fid"])) in page, cell["tags.mlflow.runName"]
        for column in ("fid", "precision", "recall", "class_consistency"):
            assert f">{column}<" in page, column
        run_page = rendered(links["the sweep's run"].replace("http://127.0.0.1:5000", base), tmp_path)
        assert "schedule_ablation-train" in run_page and "best_fid" in run_page
        compare = rendered(links["compare its 12 cells"].replace("http://127.0.0.1:5000", base), tmp_path,
                           tmp_path / "compare.png")
        grid = cells[cells["params.steps"].notna()]  # the grid's cells; the reference rows are not compared
        assert f"Comparing {len(grid)} Runs" in compare
        axes = re.findall(r'class="axis-title"[^>]*>([^<]+)<', compare)
        assert axes[:3] == ["schedule", "seed", "steps"] and axes[-1] == "fid", axes
        fid = grid["metrics.fid"].astype(float)
        for value in (fid.max(), fid.min()):  # the FID axis spans the cells' FIDs (5 decimals)
            assert f">{value:.5f}<" in compare, value
        assert (tmp_path / "cells.png").stat().st_size > 10_000 and (tmp_path / "compare.png").stat().st_size > 10_000
    finally:
        ui.terminate()
        ui.wait(timeout=30)
