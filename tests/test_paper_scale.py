"""The paper-scale paths at test size: token shards (resumable) and training from them,
DDP with 2 CPU processes (gloo) for each LightningModule, and the schedule ablation run
from imported released weights on an ImageFolder with the Inception extractor."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import SMOKE, model_path

from maskgit_lab import train
from maskgit_lab.config import load_config
from maskgit_lab.data.shards import ShardDataset, write_shards
from maskgit_lab.sweeps import schedule_ablation


def test_shards_resume_and_train_the_transformer_without_images(trained, tmp_path):
    overrides, run_dir = trained
    cfg = load_config(SMOKE, overrides)
    tok_file = model_path(overrides, "tokenizer")
    out = tmp_path / "shards"
    index = json.loads(write_shards(cfg, tok_file, "train", out, shard_size=200).read_text())
    assert [s["count"] for s in index["shards"]] == [200, 200, 100] and index["total"] == 500
    codes = np.load(out / "train" / "shard-00001.codes.npy")
    assert codes.dtype == np.uint16 and codes.shape == (200, 8, 8)
    # the shards hold the same codes as the token cache made from the same images
    from maskgit_lab.data.tokens import load_token_cache

    cache = load_token_cache(next((run_dir / "tokens").glob("*.pt")))
    ds = ShardDataset(out, "train")
    assert len(ds) == 500
    agree = float((torch.stack([ds[i][0] for i in range(500)]) == cache["codes"]["train"].reshape(500, -1)).double().mean())
    assert agree > 0.99 and [ds[i][1] for i in (0, 499)] == cache["labels"]["train"][[0, 499]].tolist()
    # resumable: a lost shard is re-encoded, the finished ones are left alone
    keep = (out / "train" / "shard-00000.codes.npy").stat().st_mtime_ns
    (out / "train" / "shard-00002.codes.npy").unlink()
    assert json.loads(write_shards(cfg, tok_file, "train", out, shard_size=200).read_text()) == index
    assert (out / "train" / "shard-00000.codes.npy").stat().st_mtime_ns == keep
    write_shards(cfg, tok_file, "val", out, shard_size=200)
    # stage 2 from the shards alone: the image folder is not even there
    shard_run = [SMOKE, *overrides[1:], "data.root=/nonexistent", f"data.token_shards={out}", "name=from_shards"]
    assert train.main(["transformer", "--no-mlflow", "--config", *shard_run]) == 0
    from maskgit_lab.checkpoints import load_model

    model, mcfg, meta = load_model(model_path(shard_run[1:], "transformer"), "transformer")
    assert meta["tokenizer_sha"] == index["tokenizer_sha"] and model.cfg.num_tokens == 64


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(fmnist_dir, tmp_path):
    """Each LightningModule (tokenizer, MaskGIT, the AR baseline) for a few steps with
    Lightning's DDP on 2 CPU processes (gloo); rank 0 writes the model files."""
    runs = tmp_path / "runs"
    for stage in ("all", "ar"):
        args = [sys.executable, "-m", "maskgit_lab.train", stage, "--no-mlflow", "--config", SMOKE,
                f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={runs}", "accelerator=cpu", "devices=2",
                "strategy=ddp", "tokenizer_train.max_steps=4", "transformer_train.max_steps=4"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
        assert "MEMBER: 2/2" in log
    done = [f"data.root={fmnist_dir}", "data.val_size=100", f"runs_dir={runs}", "tokenizer_train.max_steps=4",
            "transformer_train.max_steps=4"]
    for kind in ("tokenizer", "transformer", "ar_transformer"):
        assert model_path(done, kind).is_file(), kind


@pytest.mark.slow
def test_ablation_from_imported_weights_on_an_imagefolder(tmp_path):
    from PIL import Image
    from test_weights import CONFIG, SMALL, released_transformer_state, taming_vqgan_state

    from maskgit_lab import weights
    from maskgit_lab.eval.inception import random_state_dict

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 4)):
        for c in ("a", "b", "c"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    cfg = load_config(CONFIG, SMALL)
    torch.save({"state_dict": taming_vqgan_state(cfg)}, tmp_path / "last.ckpt")
    torch.save({"model_state_dict": released_transformer_state()}, tmp_path / "maskgit.pth")
    inception = tmp_path / "inception.pt"
    torch.save(random_state_dict(), inception)
    common = [*SMALL, f"data.root={tmp_path / 'imgs'}", "data.num_workers=0", f"runs_dir={tmp_path / 'runs'}",
              f"evaluator.inception_weights={inception}"]
    assert weights.main(["--config", CONFIG, "--vqgan", str(tmp_path / "last.ckpt"), "--transformer",
                         str(tmp_path / "maskgit.pth"), "--out-dir", str(tmp_path / "released"), *SMALL]) == 0
    args = ["--config", CONFIG, "--checkpoint", str(tmp_path / "released" / "transformer.pt"), "--device", "cpu",
            "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--out-dir", str(tmp_path / "results"), *common,
            "sweep.schedules=[cosine,linear]", "sweep.steps=[2,4]", "sweep.batch_size=4", "sweep.nll_sequences=6",
            "sweep.grid_per_class=1", "sweep.seeds=[0,1]"]
    assert schedule_ablation.main(args) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["extractor"] == "inception-v3-compat" and set(summary["schedules"]) == {"cosine", "linear"}
    assert summary["mode"] == "decode", "--checkpoint implies decode mode"
    assert all(np.isfinite(t["fid_mean"]) and t["is_mean"] is None
               for s in summary["schedules"].values() for t in s.values())
    # the same samples scored against ImageNet-style reference statistics (.npz of mu, sigma)
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    from maskgit_lab import evaluate

    out = tmp_path / "eval.json"
    assert evaluate.main(["--config", CONFIG, "--checkpoint", str(tmp_path / "released" / "transformer.pt"),
                          "--n", "6", "--batch-size", "3", "--device", "cpu", "--out", str(out), *common,
                          f"evaluator.reference_stats={stats}"]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["frechet_inception_distance"] > 0 and result["metrics"]["precision"] is None
    assert "statistics only" in result["notes"]["precision"]
