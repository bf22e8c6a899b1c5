"""The bad-input catalogue: every command given bad input (and faults: corrupt, truncated or
planted files) through its real entry point. Each bad input must end with exit status 2,
one line on stderr without a traceback, and no file created or changed; each fault must be
reported and repaired, never trusted."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from helpers import SMOKE, model_path, sweep_args, write_idx

from maskgit_lab import edit, evaluate, sample, train
from maskgit_lab.checkpoints import load_checkpoint
from maskgit_lab.config import load_config
from maskgit_lab.data import prepare
from maskgit_lab.data.tokens import cache_path, data_key
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluation import Evaluation
from maskgit_lab.sweeps import comparison, rebuild, schedule_ablation


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under the roots with a hash of its bytes (what 'nothing changed' compares)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, command, args, message: str, *watch: Path) -> None:
    """``command(args)`` exits 2 with one stderr line containing ``message``; nothing under
    ``watch`` is created or changed."""
    before = snapshot(*watch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        command(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, (args, err)
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (args, err)
    assert snapshot(*watch) == before, f"files changed by {args}"


CASES_TRAIN = [
    (["tokenizer_train.batch_size=0"], "tokenizer_train.batch_size must be at least 1"),
    (["transformer_train.lr=.nan"], "transformer_train.lr=nan must be a finite number"),
    (["tokenizer_train.max_steps=0"], "tokenizer_train.max_steps must be at least 1"),
    (["tokenizer_train.max_steps=-5"], "tokenizer_train.max_steps=-5 is out of range: it must lie in 0..1000000000"),
    (["evaluator.batch_size=0"], "evaluator.batch_size must be at least 1"),
    (["sweep.seeds=[]"], "sweep.seeds"),
    (["precision=bf17"], "unknown precision 'bf17'"),
    (["data.limit_train=10"], "fewer than one batch"),
    (["data.root=/nonexistent/fmnist"], "does not hold Fashion-MNIST"),
    (["tokenizer_train.batch_size=banana"], "must be an integer"),
]


@pytest.mark.parametrize("extra, message", CASES_TRAIN, ids=[m for _, m in CASES_TRAIN])
def test_train_refuses_bad_settings(fmnist_dir, tmp_path, capsys, extra, message):
    args = ["all", "--config", SMOKE, "--no-mlflow", f"data.root={fmnist_dir}", "data.val_size=100",
            f"runs_dir={tmp_path / 'runs'}", *extra]
    refused(capsys, train.main, args, message, tmp_path)
    assert not list((tmp_path / "runs").glob("*/tokenizer*/tokenizer.pt"))


def test_train_refuses_unknown_stage_in_one_line(capsys, tmp_path):
    refused(capsys, train.main, ["bogus"], "invalid choice: 'bogus'", tmp_path)


def test_broken_dataset_files_are_one_line(fmnist_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in fmnist_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "train-images-idx3-ubyte.gz").read_bytes()
    (broken / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    args = ["tokenizer", "--config", SMOKE, "--no-mlflow", f"data.root={broken}", "data.val_size=100",
            f"runs_dir={tmp_path / 'runs'}"]
    refused(capsys, train.main, args, "cannot be read as an idx file", tmp_path / "runs")
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    refused(capsys, train.main, args, "cannot be read as an idx file", tmp_path / "runs")


def test_env_var_naming_an_empty_folder_is_an_error_not_a_fallback(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MASKGIT_FMNIST_DIR", str(tmp_path / "empty"))
    args = ["tokenizer", "--config", SMOKE, "--no-mlflow", f"runs_dir={tmp_path / 'runs'}"]
    refused(capsys, train.main, args, "MASKGIT_FMNIST_DIR", tmp_path)


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite a file with other bytes of the same size and give it back its modification time."""
    st = path.stat()
    assert len(data) == st.st_size and data != path.read_bytes()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_caches_are_keyed_by_the_data_files_content(fmnist_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in fmnist_dir.iterdir():  # stored (level 0) gzip: new pixels keep the file's size
        (data / f.name).write_bytes(gzip.compress(gzip.decompress(f.read_bytes()), compresslevel=0, mtime=0))
    cfg = load_config(SMOKE, [f"data.root={data}", "data.val_size=100", f"runs_dir={tmp_path / 'runs'}"])
    first = Evaluation(cfg, 20, "inception-v3-compat")
    tokens, ref = cache_path(cfg.run_dir, "abc", cfg.data), first.reference_key
    assert not first.cache_hit and Evaluation(cfg, 20, "inception-v3-compat").cache_hit
    images = data / "t10k-images-idx3-ubyte.gz"
    x = np.frombuffer(gzip.decompress(images.read_bytes())[16:], np.uint8).reshape(-1, 28, 28).copy()
    x[:20] = 255 - x[:20]  # the first 20 test images, the reference's, inverted
    header = gzip.decompress(images.read_bytes())[:16]
    rewrite_in_place(images, gzip.compress(header + x.tobytes(), compresslevel=0, mtime=0))
    again = Evaluation(cfg, 20, "inception-v3-compat")
    assert cache_path(cfg.run_dir, "abc", cfg.data) != tokens, "the token cache would be reused"
    assert again.reference_key != ref and not again.cache_hit, "the reference features would be reused"


def test_an_image_folder_rewritten_in_place_gets_a_new_key(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "cats").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 100, 50, 50)).save(tmp_path / split / "cats" / f"{i}.bmp")
    cfg = load_config(SMOKE, ["data.name=imagefolder", f"data.root={tmp_path}"]).data
    key = data_key(cfg)
    assert data_key(cfg) == key
    image = tmp_path / "val" / "cats" / "1.bmp"
    before = image.read_bytes()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)  # other pixels, the same BMP size
    after = image.read_bytes()
    image.write_bytes(before)
    rewrite_in_place(image, after)
    assert data_key(cfg) != key


def test_output_paths_are_checked_before_any_work(trained, tmp_path, capsys):
    overrides, root = trained
    ckpt = str(model_path(overrides))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "target.png").write_text("keep me")
    (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
    for out, message in (("/dev/full", "not a regular file"), (str(tmp_path / "adir"), "is a folder"),
                         (str(tmp_path / "afile" / "x.png"), "is a file, not a folder"),
                         (str(tmp_path / "link.png"), "symbolic link")):
        refused(capsys, sample.main, ["--checkpoint", ckpt, "--out", out], message, tmp_path)
        refused(capsys, edit.main, ["--checkpoint", ckpt, "--test-index", "0", "--out", out], message, tmp_path)
    assert Path("/dev/full").is_char_device()
    refused(capsys, evaluate.main, ["--config", SMOKE, "--checkpoint", ckpt, "--out", str(tmp_path / "adir")],
            "is a folder", tmp_path)
    refused(capsys, schedule_ablation.main, sweep_args(trained, tmp_path / "s", "--out-dir", str(tmp_path / "afile")),
            "is not a folder", tmp_path)
    refused(capsys, prepare.main, ["--config", SMOKE, "--out", "/dev/full"], "not a regular file", tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--n", "1"], "--n at least 2"),
    (["--extractor", "bogus"], "unknown feature extractor 'bogus'"),
    (["--source", "everything"], "invalid choice"),
])
def test_evaluate_bad_arguments(trained, tmp_path, capsys, args, message):
    overrides, root = trained
    ckpt = str(model_path(overrides))
    refused(capsys, evaluate.main, ["--config", SMOKE, "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"),
                                    *args, *overrides], message, tmp_path, root)


class Planted:
    """A pickle that runs code when unpickled (it would create the file ``hit``)."""

    def __init__(self, hit: Path) -> None:
        self.hit = hit

    def __reduce__(self):
        return (Path.write_text, (self.hit, "code ran"))


def test_checkpoints_never_unpickle_code(trained, tmp_path, capsys):
    overrides, root = trained
    hit = tmp_path / "hit"
    planted = tmp_path / "planted.pt"
    with open(planted, "wb") as fh:
        pickle.dump({"format": "maskgit_lab/1", "payload": Planted(hit)}, fh)
    refused(capsys, sample.main, ["--checkpoint", str(planted), "--out", str(tmp_path / "g.png")], "not a loadable",
            tmp_path / "g.png")
    assert not hit.exists()
    with pytest.raises(ConfigError, match="is not a loadable maskgit_lab checkpoint"):
        load_checkpoint(planted, "transformer")
    assert not hit.exists()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(model_path(overrides).read_bytes()[:1000])
    refused(capsys, sample.main, ["--checkpoint", str(truncated), "--out", str(tmp_path / "g.png")],
            "not a loadable", tmp_path)


def test_planted_or_truncated_resume_file_is_ignored_not_trusted(fmnist_dir, tmp_path, capsys):
    args = ["tokenizer", "--config", SMOKE, "--no-mlflow", f"data.root={fmnist_dir}", "data.val_size=100",
            f"runs_dir={tmp_path / 'runs'}"]
    resume = model_path(args[4:], "tokenizer").parent / "lightning" / "last.ckpt"
    resume.parent.mkdir(parents=True)
    hit = tmp_path / "hit"
    with open(resume, "wb") as fh:
        pickle.dump({"hyper_parameters": Planted(hit)}, fh)
    assert train.main(args) == 0
    assert not hit.exists(), "the planted resume file ran code"
    assert "ignoring the unreadable resume file" in capsys.readouterr().err
    assert model_path(args[4:], "tokenizer").is_file()


def test_corrupt_caches_are_rebuilt(trained, tmp_path, capsys):
    overrides, root = trained
    args = ["--config", SMOKE, "--source", "train", "--n", "20", "--nll", "--checkpoint",
            str(model_path(overrides)), "--out", str(tmp_path / "e.json"), *overrides]
    assert evaluate.main(args) == 0  # builds the reference features
    caches = [*(root / "tokens").glob("tokens-*.pt"), root / "evaluator" / "evaluator.pt",
              *(root / "reference").glob("reference-*.pt")]
    assert len(caches) >= 3, caches
    capsys.readouterr()
    references = [p for p in caches if p.parent.name == "reference"]
    # the reference features are keyed by the evaluator's content: corrupt them on their own first
    for p in references:
        p.write_bytes(b"\x00garbage")
    assert evaluate.main(args) == 0
    err = capsys.readouterr().err
    assert "reference cache" in err, err
    assert all(p.read_bytes() != b"\x00garbage" for p in references), "the reference features were rebuilt"
    for p in caches:
        if p not in references:
            p.write_bytes(b"\x00garbage")
    assert evaluate.main(args) == 0
    err = capsys.readouterr().err
    assert "token cache" in err and "evaluator" in err, err
    assert (root / "evaluator" / "evaluator.pt").read_bytes() != b"\x00garbage", "the evaluator was retrained"


def test_urls_are_redacted_and_model_files_hold_no_tracking_uri(trained, tmp_path, capsys):
    overrides, root = trained
    args = sweep_args(trained, tmp_path)
    args[args.index("--storage") + 1] = "postgresql://alice:s3cret@127.0.0.1:1/optuna"
    refused(capsys, schedule_ablation.main, args, "alice:***@127.0.0.1", tmp_path)
    payload = load_checkpoint(model_path(overrides), "transformer")
    assert payload["config"]["mlflow_uri"] == ""
    refused(capsys, rebuild.main, ["--config", SMOKE, *overrides, "mlflow_uri=bogus://bob:pw@x",
                                   "--out-dir", str(tmp_path / "r")], "cannot use the MLflow tracking store", tmp_path)


def test_comparison_checks_its_arguments_before_training(trained, tmp_path, capsys):
    _, root = trained
    before = sorted(p.name for p in root.iterdir())
    refused(capsys, comparison.main, sweep_args(trained, tmp_path, "--best", "cosine:0"), "steps T=0 is impossible",
            tmp_path)
    assert sorted(p.name for p in root.iterdir()) == before, "nothing trained"


def test_sweep_lifecycle_finished_parent_and_ctrl_c(trained, tmp_path, capsys, monkeypatch):
    args = sweep_args(trained, tmp_path, "sweep.schedules=[cosine]", "sweep.steps=[2]", "--mode", "decode")
    assert schedule_ablation.main(args) == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.sweep_role = 'parent'")
    assert list(parents["status"]) == ["FINISHED"] and parents["metrics.best_fid"].notna().all()
    assert parents["tags.best_cell"].iloc[0] == "schedule=cosine,steps=2"
    assert parents["tags.mlflow.runName"].iloc[0].startswith("schedule_ablation-decode ")
    assert len([c for c in parents.columns if c.startswith("params.")]) < 25, "key params only"

    # Ctrl-C in the middle of a cell: one line, exit 130, no trial left RUNNING, runs KILLED
    calls = {"n": 0}
    real = schedule_ablation.ScheduleAblation.run_cell

    def interrupt(self, params, run_id):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, params, run_id)

    monkeypatch.setattr(schedule_ablation.ScheduleAblation, "run_cell", interrupt)
    args2 = sweep_args(trained, tmp_path, "sweep.schedules=[linear]", "sweep.steps=[2]", "--mode", "decode")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        schedule_ablation.main(args2)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 130 and len(err) == 1 and err[0].startswith("interrupted")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)), summary.study_name
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'")
    assert runs.empty, "no run is left RUNNING"
    monkeypatch.undo()
    assert schedule_ablation.main(args2) == 0  # the next run finishes the interrupted sweep


def test_gzip_fixture_roundtrip_sanity(tmp_path):
    """The catalogue's broken-file cases start from a readable file (so they test breakage)."""
    write_idx(tmp_path / "a.gz", torch.zeros(2, 3, dtype=torch.uint8).numpy())
    with gzip.open(tmp_path / "a.gz") as fh:
        assert fh.read()[:4] == bytes([0, 0, 8, 2])
    assert os.path.getsize(tmp_path / "a.gz") > 0


def test_empty_or_corrupt_image_folder_is_one_line(tmp_path, capsys):
    from PIL import Image

    from maskgit_lab.data.imagefolder import ImageFolderDataModule

    root = tmp_path / "images"
    for split in ("train", "val"):
        (root / split / "cats").mkdir(parents=True)
    args = ["tokenizer", "--config", SMOKE, "--no-mlflow", "data.name=imagefolder", f"data.root={root}",
            "tokenizer.in_channels=3", f"runs_dir={tmp_path / 'runs'}"]
    refused(capsys, train.main, args, "holds no images", tmp_path)
    for split in ("train", "val"):
        for i in range(2):
            Image.new("RGB", (36, 36), (i * 100, 50, 50)).save(root / split / "cats" / f"{i}.png")
    (root / "train" / "cats" / "1.png").write_bytes(b"\x89PNG not really")
    dm = ImageFolderDataModule(load_config(SMOKE, ["data.name=imagefolder", f"data.root={root}"]).data)
    with pytest.raises(ConfigError, match=r"1\.png is unreadable"):
        [dm.dataset("train")[i] for i in range(2)]


def test_truncated_token_shard_is_one_line(trained, tmp_path, capsys):
    from maskgit_lab.data.shards import write_shards

    overrides, run_dir = trained
    cfg = load_config(SMOKE, overrides)
    out = tmp_path / "shards"
    for split in ("train", "val"):
        write_shards(cfg, model_path(overrides, "tokenizer"), split, out, shard_size=200)
    shard = out / "train" / "shard-00001.codes.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    args = ["transformer", "--config", SMOKE, "--no-mlflow", *overrides, f"data.token_shards={out}",
            f"runs_dir={tmp_path / 'runs'}"]
    refused(capsys, train.main, args, "token shards in", tmp_path / "runs")
