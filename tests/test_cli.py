"""End to end through the user-facing commands, on the smoke preset and fixture data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SMOKE, model_path

from maskgit_lab import edit, evaluate, sample, train
from maskgit_lab.checkpoints import load_checkpoint, load_model, load_models, save_model
from maskgit_lab.config import load_config, to_dict, with_data_sizes
from maskgit_lab.data import build_image_datamodule, fmnist
from maskgit_lab.decoding.generate import generate_images
from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluator import evaluator_path, load_evaluator
from maskgit_lab.eval.inception import random_state_dict
from maskgit_lab.lit import stages
from maskgit_lab.sweeps import schedule_ablation


def test_train_writes_model_files_with_config(trained):
    overrides, root = trained
    tok_file, tr_file = model_path(overrides, "tokenizer"), model_path(overrides)
    assert tok_file.parent.name.startswith("tokenizer-") and tr_file.parent.name.startswith("transformer-cosine-seed0-")
    tok = load_checkpoint(tok_file, "tokenizer")
    tr = load_checkpoint(tr_file, "transformer")
    assert tok["config"]["tokenizer"]["codebook_size"] == 64
    assert tr["config"]["transformer"]["num_tokens"] == 64 and tr["config"]["transformer"]["num_classes"] == 10
    assert tr["meta"]["tokenizer_sha"] and tr["meta"]["git_commit"]
    metrics = json.loads((tok_file.parent / "metrics.json").read_text())
    assert 0 < metrics["code_usage"] <= 1 and metrics["psnr"] > 0 and metrics["num_images"] == 120
    assert (tr_file.parent / "lightning" / "last.ckpt").is_file()
    assert list((root / "tokens").glob("tokens-*.pt")), "token cache written"


def test_mlflow_has_both_training_runs(trained):
    import mlflow

    overrides, root = trained
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fmnist_smoke")
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_name for r in runs}
    assert {model_path(overrides, "tokenizer").parent.name, model_path(overrides).parent.name} <= names
    tr = next(r for r in runs if r.info.run_name == model_path(overrides).parent.name)
    assert "final/val_loss" in tr.data.metrics and tr.data.params["schedule"] == "cosine"
    # the settings a reader compares, not the whole flattened config (that is the artifact)
    assert {"stage", "schedule", "max_steps", "batch_size", "lr", "preset", "codebook_size", "precision", "seed",
            "data"} <= set(tr.data.params) and len(tr.data.params) <= 16, sorted(tr.data.params)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development", "the UI opens it on its runs"
    artifacts = {a.path for a in client.list_artifacts(tr.info.run_id)}
    assert {"config.yaml", "metrics.json"} <= artifacts


def test_second_run_reuses_every_stage(trained, capsys):
    overrides, root = trained
    before = model_path(overrides).stat().st_mtime_ns
    assert train.main(["all", "--config", SMOKE, "--no-mlflow", *overrides]) == 0
    assert "reusing" in capsys.readouterr().out
    assert model_path(overrides).stat().st_mtime_ns == before


@pytest.mark.parametrize(("stage", "kind"), [("transformer", "transformer"), ("ar", "ar_transformer")])
def test_a_changed_setting_trains_a_second_model_beside_the_first(trained, tmp_path, capsys, stage, kind):
    """No name=: another training seed or learning rate is another folder; the first model is
    neither retrained nor overwritten, and each is reused when asked for again."""
    overrides, root = trained
    base = [*overrides, f"runs_dir={tmp_path / 'runs'}"]
    for src in (model_path(overrides, "tokenizer").parent, root / "tokens"):
        shutil.copytree(src, tmp_path / "runs" / "fmnist_smoke" / src.name)
    assert train.main([stage, "--config", SMOKE, "--no-mlflow", *base]) == 0
    first = model_path(base, kind)
    before = first.stat().st_mtime_ns
    files = {}
    for change in ("transformer_train.seed=1", "transformer_train.lr=2e-3"):
        assert train.main([stage, "--config", SMOKE, "--no-mlflow", *base, change]) == 0
        files[change] = model_path(base, kind, change)
    assert len({first, *files.values()}) == 3 and all(f.parent.parent == first.parent.parent for f in files.values())
    assert first.stat().st_mtime_ns == before, "the first model is not retrained or overwritten"
    a, b = load_checkpoint(first, kind), load_checkpoint(files["transformer_train.seed=1"], kind)
    assert (a["config"]["transformer_train"]["seed"], b["config"]["transformer_train"]["seed"]) == (0, 1)
    assert load_checkpoint(files["transformer_train.lr=2e-3"], kind)["config"]["transformer_train"]["lr"] == 2e-3
    assert a["meta"]["tokenizer_sha"] == b["meta"]["tokenizer_sha"], "one tokenizer for every model"
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    capsys.readouterr()
    assert train.main([stage, "--config", SMOKE, "--no-mlflow", *base, "transformer_train.seed=1"]) == 0
    assert f"{files['transformer_train.seed=1'].parent.name}: reusing" in capsys.readouterr().out


def test_a_model_in_a_folder_of_another_name_is_found_by_its_stored_settings(trained, tmp_path, capsys):
    """Model folders named by hand or by an older layout (transformer-cosine/) keep working:
    the stored config decides, and a folder holding other settings is never taken."""
    overrides, root = trained
    runs = tmp_path / "runs" / "fmnist_smoke"
    base = [*overrides, f"runs_dir={tmp_path / 'runs'}"]
    shutil.copytree(model_path(overrides, "tokenizer").parent, runs / "tokenizer")
    shutil.copytree(root / "tokens", runs / "tokens")
    shutil.copytree(model_path(overrides).parent, runs / "transformer-cosine")
    assert model_path(base, "tokenizer") == runs / "tokenizer" / "tokenizer.pt"
    assert model_path(base) == runs / "transformer-cosine" / "transformer.pt"
    assert train.main(["all", "--config", SMOKE, "--no-mlflow", *base]) == 0
    assert "transformer-cosine: reusing" in capsys.readouterr().out
    assert sorted(p.name for p in runs.iterdir()) == ["tokenizer", "tokens", "transformer-cosine"]
    other = model_path(base, "transformer", "transformer_train.lr=2e-3")
    assert other.parent.name.startswith("transformer-cosine-seed0-") and not other.exists()


def test_sample_grid_and_process(trained, tmp_path):
    overrides, root = trained
    ckpt = str(model_path(overrides))
    out, proc = tmp_path / "grid.png", tmp_path / "proc.png"
    args = ["--checkpoint", ckpt, "--per-class", "2", "--out", str(out), "--process", str(proc)]
    assert sample.main([*args, "--schedule", "linear", "--steps", "5", "--seed", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and proc.stat().st_size > 0


def test_generation_is_deterministic_and_schedule_matters(trained):

    overrides, _ = trained
    tr, cfg, meta = load_model(model_path(overrides), "transformer")
    tok, _, _ = load_model(meta["tokenizer_file"], "tokenizer")
    labels = torch.arange(10)
    a = generate_images(tr, tok, labels, DecodeConfig(steps=4), seed=0, batch_size=4)
    b = generate_images(tr, tok, labels, DecodeConfig(steps=4), seed=0, batch_size=4)
    c = generate_images(tr, tok, labels, DecodeConfig(steps=4, schedule="logarithmic"), seed=0, batch_size=4)
    assert a.shape == (10, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)


def test_runs_used_from_another_directory_find_their_tokenizer(trained, tmp_path, monkeypatch):
    """A transformer records its tokenizer's path as given at training (relative to that run's
    working directory). Used from elsewhere, the tokenizer beside it in its runs/<experiment>/
    folder is taken when its content matches; a file of other content is never taken."""
    overrides, _ = trained
    tr, cfg, meta = load_model(model_path(overrides), "transformer")
    tok, tok_cfg, tok_meta = load_model(model_path(overrides, "tokenizer"), "tokenizer")
    moved = tmp_path / "elsewhere" / "fmnist_smoke"
    shutil.copytree(model_path(overrides, "tokenizer").parent, moved / "tokenizer")
    ckpt = moved / "transformer-cosine" / "transformer.pt"
    save_model(ckpt, "transformer", tr, cfg, {**meta, "tokenizer_file": "runs/fmnist_smoke/tokenizer/tokenizer.pt"})
    monkeypatch.chdir(tmp_path)
    _, found, _, _ = load_models(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(found.state_dict().values(), tok.state_dict().values(), strict=True))

    other = {k: v + 1 if v.is_floating_point() else v for k, v in tok.state_dict().items()}
    tok.load_state_dict(other)
    save_model(tmp_path / "runs" / "fmnist_smoke" / "tokenizer" / "tokenizer.pt", "tokenizer", tok, tok_cfg, tok_meta)
    _, found, _, _ = load_models(ckpt)  # the stored path now holds another tokenizer: skipped
    assert not torch.equal(found.state_dict()["quantize.embedding.weight"], other["quantize.embedding.weight"])
    save_model(moved / "tokenizer" / "tokenizer.pt", "tokenizer", tok, tok_cfg, tok_meta)
    with pytest.raises(ConfigError, match="wrong checkpoint: .* is not the tokenizer"):
        load_models(ckpt)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_bad_inputs_exit_2_with_one_line_and_no_output(trained, tmp_path, capsys):
    overrides, _ = trained
    ckpt = str(model_path(overrides))
    out = tmp_path / "never.png"
    cases = [
        (["--checkpoint", ckpt, "--schedule", "spiral"], "valid schedules: exponential"),
        (["--checkpoint", ckpt, "--steps", "0"], "between 1 and N=64"),
        (["--checkpoint", ckpt, "--steps", "65"], "between 1 and N=64"),
        (["--checkpoint", ckpt, "--gumbel-temperature", "-1"], "choice_temperature must be a finite number >= 0"),
        (["--checkpoint", str(model_path(overrides, "tokenizer"))], "wrong checkpoint"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "not found"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            sample.main([*args, "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(lines) == 1 and message in lines[0], (args, lines)
        assert not out.exists()
    # the same through a fresh interpreter: nothing else (warnings, tracebacks) reaches stderr
    r = run_cli("maskgit_lab.sample", *cases[0][0], "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: unknown mask schedule 'spiral'; valid "
                                                                 "schedules: exponential, cubic, square, cosine, "
                                                                 "linear, square_root, logarithmic, arccos"], r.stderr
    assert not out.exists()


@pytest.mark.parametrize("device,message", [
    ("cuda:99", "cuda:99"), ("gpu", "unknown device 'gpu'; valid: cpu, cuda, cuda:<index>")])
def test_every_command_refuses_a_device_it_cannot_use(device, message, tmp_path, capsys):

    for command in (sample.main, edit.main, evaluate.main, schedule_ablation.main):
        with pytest.raises(SystemExit) as exc:
            command(["--device", device, "--out-dir" if command is schedule_ablation.main else "--out",
                     str(tmp_path / "never")])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, (command, err)
        assert not (tmp_path / "never").exists()


def test_guidance_refused_without_class_dropout(fmnist_dir, tmp_path, capsys):
    overrides = [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={tmp_path}",
                 "transformer_train.class_dropout=0.0", "tokenizer_train.max_steps=2",
                 "transformer_train.max_steps=2"]
    assert train.main(["all", "--config", SMOKE, "--no-mlflow", *overrides]) == 0
    ckpt = model_path(overrides)
    with pytest.raises(SystemExit) as exc:
        sample.main(["--checkpoint", str(ckpt), "--cfg-weight", "2", "--out", str(tmp_path / "g.png")])
    assert exc.value.code == 2 and "class dropout" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_missing_dataset_says_three_ways(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv(fmnist.ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exc:
        train.main(["tokenizer", "--config", SMOKE, "--no-mlflow", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "apt-get install dataset-fashion-mnist" in err and "data.download=true" in err and "MASKGIT_FMNIST_DIR" in err
    # a folder named explicitly that lacks the dataset is an error, not a fallback
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        train.main(["tokenizer", "--config", SMOKE, "--no-mlflow", f"data.root={tmp_path / 'empty'}",
                    f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "does not hold Fashion-MNIST" in err and "train-images-idx3-ubyte.gz" in err, err
    assert not (tmp_path / "runs").exists()


def test_malformed_config_and_unknown_override(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer: {ch: [1, 2\n")
    for args in (["tokenizer", "--config", str(bad)], ["tokenizer", "--config", SMOKE, "tokenizer.chanels=3"]):
        with pytest.raises(SystemExit) as exc:
            train.main(args)
        assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not valid YAML" in err[0] and "unknown key tokenizer.chanels; valid keys:" in err[1]


@pytest.mark.slow  # a training in a subprocess, killed, then resumed
def test_a_killed_training_resumes_from_its_last_checkpoint(trained, tmp_path):
    """SIGKILL a transformer training once its resume file exists; the next run continues
    from that step (its MLflow run logs only the batches after it) and ends at max_steps."""
    import mlflow

    overrides, root = trained
    runs = tmp_path / "runs"
    for src in (model_path(overrides, "tokenizer").parent, root / "tokens"):
        shutil.copytree(src, runs / "fmnist_smoke" / src.name)
    mine = [*overrides, f"runs_dir={runs}", f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "transformer_train.max_steps=400", "transformer_train.val_every=40", "transformer_train.batch_size=32"]
    resume = model_path(mine).parent / "lightning" / "last.ckpt"
    cmd = [sys.executable, "-m", "maskgit_lab.train", "transformer", "--config", SMOKE, *mine]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ,
                                                                                           "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not resume.is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # let the checkpoint's atomic write finish
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert resume.is_file() and not model_path(mine).exists(), "killed after the first checkpoint, before the end"
    killed_at = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < killed_at < 400
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {resume}" in done.stdout
    meta = load_checkpoint(model_path(mine), "transformer")["meta"]
    assert meta["metrics"]["steps"] == 400
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fmnist_smoke")
    finished = [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]
    assert len(finished) == 1
    logged = [m.step for m in client.get_metric_history(finished[0].info.run_id, "train/loss")]
    assert logged and min(logged) >= killed_at - 1, (killed_at, logged[:3])


def test_validation_every_val_every_batches_across_epochs(fmnist_dir, tmp_path):
    """val_every longer than an epoch: validation at its multiples, not at every epoch end."""
    import mlflow

    overrides = [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={tmp_path}",
                 f"mlflow_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    extra = ["transformer_train.batch_size=32", "transformer_train.val_every=20", "transformer_train.max_steps=41"]
    assert train.main(["all", "--config", SMOKE, *overrides, *extra]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fmnist_smoke")
    run = next(r for r in client.search_runs([exp.experiment_id])
               if r.info.run_name.startswith("transformer-cosine-"))
    n_train = len(build_image_datamodule(load_config(SMOKE, overrides).data, 32).dataset("train"))
    assert n_train // 32 < 20, "an epoch must be shorter than val_every for this test"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val/loss")})
    # in-fit validations are logged at the 0-based index of their last training batch; the
    # validation after fit at the final step
    assert steps == [20 - 1, 40 - 1, 41]


def test_settings_check_resolves_presets():
    """A config that names a preset (sizes left at 0) matches the model file it trained."""

    cfg = load_config("experiments/fmnist.yaml")
    assert cfg.transformer.dim == 0  # sizes come from the preset
    saved = to_dict(with_data_sizes(cfg, 256, 64, 10))
    assert stages._settings_diff(saved, cfg, stages.TRANSFORMER_SECTIONS) == []
    other = load_config("experiments/fmnist.yaml", ["transformer.depth=6"])
    assert stages._settings_diff(saved, other, stages.TRANSFORMER_SECTIONS) == ["transformer.depth"]


@pytest.mark.parametrize("source", ["samples", "reconstructions", "train"])
def test_evaluate_sources(trained, tmp_path, source):

    overrides, root = trained
    out = tmp_path / f"{source}.json"
    extra = ["--nll"] if source == "samples" else []
    assert evaluate.main(["--config", SMOKE, "--source", source, "--n", "60", "--batch-size", "25",
                          "--out", str(out), *extra, *overrides]) == 0
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert result["n_generated"] == 60 and result["n_reference"] == 60 and result["extractor"] == "fmnist-evaluator"
    assert m["frechet_inception_distance"] >= 0 and 0 <= m["precision"] <= 1
    if source == "samples":
        assert 0 <= m["class_consistency"] <= 1 and result["decode"]["steps"] == 4
        # the NLL is positive and finite and covers all 120 fixture test sequences
        assert 0 < result["nll"] < 20 and result["nll_details"]["n_sequences"] == 120
    if source == "train":  # real images: the evaluator's accuracy on them against their labels
        cfg = load_config(SMOKE, overrides)
        net, _, _ = load_evaluator(evaluator_path(cfg))
        ds = build_image_datamodule(cfg.data, 60).dataset("train")
        x, y = ds.tensors[0][:60], ds.tensors[1][:60]
        with torch.no_grad():
            expected = float((net(x)[1].argmax(1) == y).double().mean())
        assert m["class_consistency"] == pytest.approx(expected, abs=1e-9)
    else:
        assert 0 <= m["class_consistency"] <= 1
    assert list((root / "reference").glob("reference-*.pt")), "reference features cached"


def test_evaluate_reconstructions_needs_only_the_tokenizer(trained, tmp_path, capsys):
    """A tokenizer is judged before any transformer exists: the experiment's tokenizer file,
    its reconstructions scored, their class consistency the evaluator's accuracy on them."""

    overrides, root = trained
    runs = tmp_path / "runs"
    tok_dir = model_path(overrides, "tokenizer").parent
    shutil.copytree(tok_dir, runs / root.name / tok_dir.name, ignore=shutil.ignore_patterns("lightning"))
    if (root / "evaluator").is_dir():
        shutil.copytree(root / "evaluator", runs / root.name / "evaluator")
    moved = [o for o in overrides if not o.startswith("runs_dir=")] + [f"runs_dir={runs}"]
    out = tmp_path / "rec.json"
    assert evaluate.main(["--config", SMOKE, "--source", "reconstructions", "--n", "40", "--batch-size", "20",
                          "--out", str(out), *moved]) == 0
    assert not list(runs.glob("*/transformer-*")), "no transformer trained or needed"
    m = json.loads(out.read_text())["metrics"]
    assert 0 <= m["class_consistency"] <= 1 and m["frechet_inception_distance"] >= 0
    shutil.rmtree(runs / root.name / tok_dir.name)
    out.unlink()
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--config", SMOKE, "--source", "reconstructions", "--n", "40", "--out", str(out), *moved])
    assert exit_.value.code == 2 and "no trained tokenizer" in capsys.readouterr().err and not out.exists()


def test_evaluate_with_inception_offline_random_weights(trained, tmp_path):
    """The Inception path end to end without any download: a weights file of the right shapes."""

    overrides, root = trained
    weights = tmp_path / "inception.pth"
    torch.save(random_state_dict(), weights)
    out = tmp_path / "inc.json"
    args = ["--config", SMOKE, "--source", "train", "--n", "8", "--batch-size", "4", "--extractor",
            "inception-v3-compat", "--out", str(out), *overrides, f"evaluator.inception_weights={weights}"]
    assert evaluate.main(args) == 0
    result = json.loads(out.read_text())
    assert result["extractor"] == "inception-v3-compat" and result["n_generated"] == 8
    assert result["metrics"]["frechet_inception_distance"] > 0
