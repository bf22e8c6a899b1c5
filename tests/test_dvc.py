"""`dvc repro` on the smoke preset in a temporary copy of the repository: the whole pipeline
runs, a second repro does nothing, and a changed parameter or writer makes only its dependents
stale (one of them re-run to show the new value reaches it)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", "docs/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def _dvc(repo: Path, *args: str, env: dict, stdout_only: bool = False) -> str:
    r = subprocess.run([str(DVC), *args], cwd=repo, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout if stdout_only else r.stdout + r.stderr


def _stale(repo: Path, env: dict) -> set[str]:
    """The stages ``dvc repro`` would run now (what ``dvc status`` reports changed)."""
    return set(json.loads(_dvc(repo, "status", "--json", env=env, stdout_only=True).strip() or "{}"))


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.skipif(not DVC.exists(), reason="dvc is installed with the project")
@pytest.mark.slow
def test_dvc_repro_runs_all_then_nothing_then_only_dependents(tmp_path, fmnist_dir):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    smoke = yaml.safe_load((repo / "experiments/fmnist_smoke.yaml").read_text())
    smoke["data"].update(root=str(fmnist_dir), val_size=100)
    # Table 1 chooses the AR temperature on a selection seed, as the default does, and caches the scan
    smoke.setdefault("sweep", {})["ar_temperature_scan"] = [0.8, 1.0]
    (repo / "experiments/dvc_smoke.yaml").write_text(yaml.safe_dump(smoke))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(config="experiments/dvc_smoke.yaml", experiment="dvc_smoke")
    params["sweep"].update(n=40, steps="[2,4]", seeds="[0,1]", table_seeds="[0,1]")
    params["tune"].update(trials=2)
    params["taus"] = "1,3"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{DVC.parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MASKGIT_FMNIST_DIR", None)
    _dvc(repo, "config", "core.no_scm", "true", env=env)

    first = _dvc(repo, "repro", env=env)
    transformers = {f"train_transformer@{s}" for s in params["train_schedules"]}
    assert len(transformers) == 8, "the paper's design: one transformer per schedule"
    assert {"prepare_data", "train_tokenizer", "tokenize", "train_ar", "train_evaluator", "schedule_ablation",
            "tune_sampler", "comparison", "editing", "choice_temperature"} | transformers == _ran(first), first
    results = repo / "results/dvc_smoke"
    for f in ("schedule_ablation.md", "summary.json", "fid_vs_steps.csv", "tune_sampler_cosine.md",
              "comparison.md", "comparison.csv", "editing.md", "choice_temperature.md"):
        assert (results / f).is_file(), f
    assert "best_fid" in _dvc(repo, "metrics", "show", env=env)

    second = _dvc(repo, "repro", env=env)
    assert _ran(second) == set(), second

    # the sample count feeds every evaluation stage and nothing upstream of them: DVC sees exactly
    # those five as changed; running one of them shows the new value reaches its command
    sweeps = {"schedule_ablation", "tune_sampler", "comparison", "editing", "choice_temperature"}
    params["sweep"]["n"] = 30
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _stale(repo, env) == sweeps
    third = _dvc(repo, "repro", "schedule_ablation", env=env)
    assert _ran(third) == {"schedule_ablation"}, third
    assert '"n": 30' in (results / "summary.json").read_text()
    assert _stale(repo, env) == sweeps - {"schedule_ablation"}

    # a change in a table writer makes the sweep stages stale (their finished cells would be
    # reused), never a training stage
    writer = repo / "src/maskgit_lab/sweeps/editing.py"
    writer.write_text(writer.read_text() + "\n# changed\n")
    assert _stale(repo, env) == sweeps
    assert not (ROOT / "results/dvc_smoke").exists(), "the committed results are untouched"
