"""The DVC pipeline: every stage depends on exactly the package modules its command imports,
and `dvc repro` on the smoke preset in a temporary copy of the repository runs the whole
pipeline, then nothing, and after a changed parameter or module only its dependents (one of
them re-run to show the new value reaches it)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import import_graph, modules

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def entry_module(cmd: str) -> str:
    """The package module a stage's command runs: ``python -m M`` or ``python sweeps/X.py``
    (whose ``main`` comes from ``maskgit_lab.sweeps.X``)."""
    words = cmd.split()
    if "-m" in words:
        return words[words.index("-m") + 1]
    script = next(w for w in words if w.startswith("sweeps/") and w.endswith(".py"))
    return "maskgit_lab.sweeps." + Path(script).stem


def imported_files(module: str) -> set[str]:
    """The package's files that importing ``module`` runs: its import closure, with the
    ``__init__`` of every package on the way."""
    graph, files = import_graph(), modules()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph[m])
        todo.extend(".".join(m.split(".")[:i]) for i in range(1, len(m.split("."))))
    return {str(files[m].relative_to(ROOT)) for m in seen}


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    """A change to a module reaches exactly the stages that run it: adding or changing code one
    stage does not import never makes another stage's results stale."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert len(stages) >= 10
    for name, stage in stages.items():
        body = stage.get("do", stage)
        need = imported_files(entry_module(body["cmd"]))
        src = [d for d in body["deps"] if d.startswith("src/")]
        covered = {f for f in need if any(f == d or f.startswith(d.rstrip("/") + "/") for d in src)}
        assert covered == need, f"{name} lacks {sorted(need - covered)}"
        listed = {str(p.relative_to(ROOT)) for d in src for p in ([ROOT / d] if d.endswith(".py")
                                                                   else (ROOT / d).rglob("*.py"))}
        assert listed <= need, f"{name} depends on modules it does not import: {sorted(listed - need)}"
        scripts = [w for w in body["cmd"].split() if w.startswith("sweeps/")]
        assert all(s in body["deps"] for s in scripts), f"{name}: its script is a dependency"


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", "docs/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    # the table over trainings is rebuilt from the cells recorded in its folder
    recorded = yaml.safe_load((ROOT / "params.yaml").read_text())["trainings_table"]
    for f in ("cells.csv", "table.json"):
        (dst / recorded).mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / recorded / f, dst / recorded / f)


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
    params["orders"].update(steps="[2,4]", seeds="[0,1]")
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
            "table3_trainings", "order_ablation", "tune_sampler", "comparison", "editing", "choice_temperature"} \
        | transformers \
        == _ran(first), first
    results = repo / "results/dvc_smoke"
    for f in ("table3/schedule_ablation.md", "table3/summary.json", "table3/fid_vs_steps.csv",
              "tuner/tune_sampler_cosine.md", "table1/comparison.md", "table1/comparison.csv", "table2/editing.md",
              "choice_temperature/choice_temperature.md", "order_ablation/order_ablation.md"):
        assert (results / f).is_file(), f
    recorded = params["trainings_table"]
    assert (repo / recorded / "schedule_ablation.md").read_text() == (ROOT / recorded / "schedule_ablation.md").read_text()
    assert "best_fid" in _dvc(repo, "metrics", "show", env=env)

    second = _dvc(repo, "repro", env=env)
    assert _ran(second) == set(), second

    # the sample count feeds every evaluation stage and nothing upstream of them: DVC sees exactly
    # those six as changed; running one of them shows the new value reaches its command
    sweeps = {"schedule_ablation", "order_ablation", "tune_sampler", "comparison", "editing", "choice_temperature"}
    params["sweep"]["n"] = 30
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _stale(repo, env) == sweeps
    third = _dvc(repo, "repro", "schedule_ablation", env=env)
    assert _ran(third) == {"schedule_ablation"}, third
    assert '"n": 30' in (results / "table3" / "summary.json").read_text()
    assert _stale(repo, env) == sweeps - {"schedule_ablation"}
    _dvc(repo, "repro", env=env)

    # a module reaches exactly the stages that import it: one sweep's writer, that sweep; the
    # runner every sweep shares, every sweep (their finished cells would be reused), never a
    # training stage
    writer = repo / "src/maskgit_lab/sweeps/editing.py"
    writer.write_text(writer.read_text() + "\n# changed\n")
    assert _stale(repo, env) == {"editing"}
    runner = repo / "src/maskgit_lab/sweeps/common.py"
    runner.write_text(runner.read_text() + "\n# changed\n")
    assert _stale(repo, env) == sweeps
    assert not (ROOT / "results/dvc_smoke").exists(), "the committed results are untouched"
