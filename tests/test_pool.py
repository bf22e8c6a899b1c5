"""Several transformers trained side by side (maskgit_lab.lit.pool), as the ablation does."""

from __future__ import annotations

import pytest
import torch
from helpers import SMOKE

from maskgit_lab.checkpoints import load_checkpoint
from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError
from maskgit_lab.identity import model_file
from maskgit_lab.lit.pool import plan_workers
from maskgit_lab.sweeps.common import ensure_models, schedule_config


@pytest.mark.parametrize("overrides, n_models, cores, expected", [
    ([], 8, 2, (2, 1)),                      # the default's 2 cores: two 1-thread trainings
    ([], 8, 16, (8, 2)),                     # at most one process per model, cores shared out
    ([], 3, 16, (3, 5)),
    ([], 1, 16, (1, 16)),                    # one model: the calling process, every thread
    (["train_workers=1"], 8, 16, (1, 16)),   # one after the other
    (["train_workers=4"], 8, 16, (4, 4)),
    (["train_workers=4"], 8, 2, (2, 1)),     # never more processes than cores
    (["num_nodes=2"], 8, 16, (1, 16)),       # distributed training: one at a time
])
def test_plan_workers(overrides, n_models, cores, expected):
    cfg = load_config(SMOKE, ["accelerator=cpu", *overrides])
    assert plan_workers(cfg, n_models, cores=cores) == expected


@pytest.mark.parametrize("value", ["0", "many", "1.5", "true"])
def test_bad_train_workers_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="train_workers must be 'auto' or a whole number"):
        load_config(SMOKE, [f"train_workers={value}"])


@pytest.mark.slow
def test_missing_transformers_train_side_by_side_then_are_reused(smoke_overrides, capsys):
    if torch.get_num_threads() < 2:
        pytest.skip("side-by-side training needs two cores")
    cfg = load_config(SMOKE, [*smoke_overrides, "accelerator=cpu"])
    files = ensure_models(cfg, ["cosine", "linear"], log=False)
    out = capsys.readouterr().out
    assert "training 2 transformers, 2 at a time with" in out
    for schedule in ("cosine", "linear"):
        # each worker's output comes back under its model's name, ending with its saved model
        name = model_file(schedule_config(cfg, schedule), "transformer").parent.name
        assert f"[{name}] {name}: val loss" in out
        payload = load_checkpoint(files[schedule], "transformer")
        assert payload["config"]["transformer_train"]["schedule"] == schedule
        assert files[schedule] == model_file(schedule_config(cfg, schedule), "transformer")
    mtimes = {s: f.stat().st_mtime_ns for s, f in files.items()}

    assert ensure_models(cfg, ["cosine", "linear"], log=False) == files
    out = capsys.readouterr().out
    assert "at a time" not in out and out.count(": reusing") == 3  # tokenizer and both transformers
    assert {s: f.stat().st_mtime_ns for s, f in files.items()} == mtimes


@pytest.mark.slow
def test_a_failing_worker_is_one_error_naming_the_model(smoke_overrides, capsys):
    if torch.get_num_threads() < 2:
        pytest.skip("side-by-side training needs two cores")
    # more than the 500 training grids in one batch: each worker stops with the stage's own error
    cfg = load_config(SMOKE, [*smoke_overrides, "accelerator=cpu", "transformer_train.batch_size=4096"])
    with pytest.raises(ConfigError) as info:
        ensure_models(cfg, ["cosine", "linear"], log=False)
    message = str(info.value)
    for schedule in ("cosine", "linear"):
        name = model_file(schedule_config(cfg, schedule), "transformer").parent.name
        assert f"training {name} failed: the training split holds" in message
        assert not model_file(schedule_config(cfg, schedule), "transformer").exists()
    assert "\n" not in message
