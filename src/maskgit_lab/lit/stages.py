"""The training stages: tokenizer (stage 1), token cache, MaskGIT transformer (stage 2) and
the autoregressive baseline, each a Lightning fit of its LightningModule.

Each stage skips work already done (its model file exists with the same settings),
resumes an interrupted run from its last Lightning checkpoint, logs to MLflow, and
writes a model file that embeds the resolved config plus a ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)

from maskgit_lab import tracking
from maskgit_lab.checkpoints import (
    load_checkpoint,
    load_model,
    load_weights,
    save_model,
    tokenizer_identity,
)
from maskgit_lab.config import ExperimentConfig, from_dict, to_dict, with_data_sizes
from maskgit_lab.data import build_image_datamodule
from maskgit_lab.data.shards import ShardDataModule
from maskgit_lab.data.tokens import TokenDataModule, build_token_cache, cache_path, load_token_cache
from maskgit_lab.errors import ConfigError, fit
from maskgit_lab.hardware import resolve_precision, training_device
from maskgit_lab.identity import MODEL_FILES, model_dir, model_file
from maskgit_lab.io import atomic_write_text
from maskgit_lab.lit.ar import ARModule
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.lit.tokenizer import TokenizerModule, evaluate_reconstruction

# Lightning's advice to manual-optimization users and its product tips are noise here.
warnings.filterwarnings("ignore", message=".*pre-optimization state.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())

TOKENIZER_SECTIONS = ("data", "tokenizer", "tokenizer_train")
TRANSFORMER_SECTIONS = (*TOKENIZER_SECTIONS, "transformer", "transformer_train")
IGNORED_DATA_KEYS = ("num_workers", "download", "token_shards")


def _comparable(tree: dict, sections: tuple[str, ...]) -> dict:
    out = {k: dict(tree[k]) for k in sections}
    for k in IGNORED_DATA_KEYS:
        out["data"].pop(k, None)
    for k in ("tokenizer_train", "transformer_train"):  # compiling changes speed, not the model
        if k in out:
            out[k].pop("compile", None)
    if "transformer" in out:  # filled-in sizes are derived, not chosen
        for k in ("codebook_size", "num_tokens", "num_classes"):
            out["transformer"].pop(k, None)
    return out


def _check_same_settings(path: Path, kind: str, cfg: ExperimentConfig, sections: tuple[str, ...],
                         ignore: tuple[str, ...] = ()) -> dict:
    """Return the saved payload if its settings match ``cfg``; else a clear error."""
    payload = load_checkpoint(path, kind)
    diff = _settings_diff(payload["config"], cfg, sections, ignore)
    if diff:
        raise ConfigError(
            f"{path} was trained with other settings ({', '.join(diff[:6])}); pass --force to retrain it"
        )
    return payload


def stage_precision(cfg: ExperimentConfig, stage_precision: str, name: str, logger) -> dict:
    """The stage's Lightning precision (``auto`` resolved for this machine), printed and logged:
    -> {"precision": ..., "precision_reason": ...} for the model file's meta."""
    precision, reason = resolve_precision(stage_precision or cfg.precision, training_device(cfg.accelerator))
    print(f"{name}: precision {precision} ({reason})", flush=True)
    choice = {"precision": precision, "precision_reason": reason}
    if logger is not None:
        logger.log_hyperparams({f"resolved.{k}": v for k, v in choice.items()})
    return choice


def _trainer(cfg: ExperimentConfig, stage_dir: Path, logger, max_steps: int, val_every: int, n_batches: int,
             precision: str):
    ckpt = ModelCheckpoint(dirpath=stage_dir / "lightning", save_last=True, save_top_k=0,
                           every_n_train_steps=max(1, val_every if max_steps < 0 else min(val_every, max_steps)))
    # Rich redraws in place on a terminal; in a log file TQDM prints a line every 50 batches.
    bar = RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=50)
    # Validate every val_every batches, across epochs when an epoch is shorter (Lightning
    # counts batches over epochs only with check_val_every_n_epoch=None)
    per_epoch = max(1, n_batches // _world_size(cfg))
    val_every = max(1, val_every)
    callbacks = [ckpt, bar]
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=precision,
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=val_every,
        check_val_every_n_epoch=1 if val_every <= per_epoch else None,
        num_sanity_val_steps=0,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        log_every_n_steps=10,
        default_root_dir=str(stage_dir),
        enable_model_summary=False,
    )


def _world_size(cfg: ExperimentConfig) -> int:
    """Processes Lightning will train with (each sees 1/world of the batches per epoch)."""
    d = cfg.devices
    if isinstance(d, list | tuple):
        per_node = len(d)
    elif isinstance(d, int) and d > 0:
        per_node = d
    else:  # "auto" or -1: every GPU, else one CPU process
        per_node = torch.cuda.device_count() if cfg.accelerator in ("auto", "gpu", "cuda") else 1
    return max(1, per_node) * max(1, cfg.num_nodes)


# Settings a resumed run may change: extending or shortening training is legitimate.
RESUMABLE_CHANGES = ("max_steps", "val_every")


def _settings_diff(saved: dict, cfg: ExperimentConfig, sections: tuple[str, ...], ignore=()) -> list[str]:
    """Keys of ``sections`` whose saved value differs from ``cfg``'s (preset sizes resolved)."""
    cfg = replace(cfg, transformer=cfg.transformer.resolved())
    # Round-trip the saved config so settings added to the code since carry their defaults.
    a, b = _comparable(to_dict(from_dict(saved)), sections), _comparable(to_dict(cfg), sections)
    return [
        f"{s}.{k}" for s in sections for k in sorted(set(a[s]) | set(b[s]))
        if a[s].get(k) != b[s].get(k) and k not in ignore
    ]


def _last_ckpt(stage_dir: Path, cfg: ExperimentConfig, sections: tuple[str, ...]) -> str | None:
    """The run's last Lightning checkpoint to resume from, if it was made with these settings."""
    p = stage_dir / "lightning" / "last.ckpt"
    if not p.is_file():
        return None
    # weights_only: the folder is a DVC output a shared cache could fill, so nothing in it is
    # unpickled as code; Lightning's own checkpoints load this way (plain tensors and dicts).
    try:
        ckpt = load_weights(p)
        saved = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    except Exception as exc:  # noqa: BLE001 - truncated (a full disk), corrupt, or not a checkpoint at all
        print(f"warning: ignoring the unreadable resume file {p} ({type(exc).__name__}); training from the start",
              file=sys.stderr)
        p.unlink()
        return None
    diff = _settings_diff(saved, cfg, sections, RESUMABLE_CHANGES) if saved else ["(no config)"]
    if diff:
        raise ConfigError(
            f"cannot resume {p}: it was made with other settings ({', '.join(diff[:6])}); "
            "pass --force to start over"
        )
    print(f"resuming from {p}")
    return str(p)


def _finish(stage_dir: Path, logger, metrics: dict, cfg: ExperimentConfig) -> None:
    atomic_write_text(stage_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if logger is not None:
        logger.log_metrics({f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        logger.experiment.log_artifact(logger.run_id, str(stage_dir / "metrics.json"))
        logger.finalize("success")
        print(f"MLflow: {stage_dir.name}: {tracking.run_url(cfg.tracking_uri, logger.experiment_id, logger.run_id)}")


def train_tokenizer(cfg: ExperimentConfig, force: bool = False, log: bool = True, folder: Path | None = None) -> dict:
    """Train (or reuse) the tokenizer in ``folder`` (default: its content-named folder, or the
    one holding a tokenizer of these settings); returns its test-set reconstruction metrics."""
    d = Path(folder) if folder is not None else model_dir(cfg, "tokenizer")
    file = d / MODEL_FILES["tokenizer"]
    if file.is_file() and not force:
        payload = _check_same_settings(file, "tokenizer", cfg, TOKENIZER_SECTIONS)
        print(f"tokenizer: reusing {file}")
        return payload["meta"]["metrics"]
    if cfg.tokenizer.layout != "vqgan":
        raise ConfigError(f"tokenizer.layout={cfg.tokenizer.layout} is for imported weights (python -m "
                          "maskgit_lab.weights); the suite trains the vqgan layout")
    if force and d.exists():
        shutil.rmtree(d)
    t = cfg.tokenizer_train
    L.seed_everything(t.seed, workers=True, verbose=False)
    dm = build_image_datamodule(cfg.data, t.batch_size)
    if dm.in_channels != cfg.tokenizer.in_channels:
        raise ConfigError(
            f"tokenizer.in_channels={cfg.tokenizer.in_channels} but the {cfg.data.name} images have "
            f"{dm.in_channels} channel(s)"
        )
    n_batches = len(dm.dataset("train")) // t.batch_size
    if n_batches < 1:
        raise ConfigError(f"the training split holds {len(dm.dataset('train'))} images, fewer than one batch of "
                          f"tokenizer_train.batch_size={t.batch_size}: lower the batch size or use more data")
    module = TokenizerModule(cfg)
    logger = mlflow_logger_or_none(cfg, d.name, log, "tokenizer")
    # Manual optimization: the module stops itself after max_steps batches.
    choice = stage_precision(cfg, t.precision, "tokenizer", logger)
    trainer = _trainer(cfg, d, logger, -1, t.val_every, n_batches, choice["precision"])
    start = time.time()
    fit(trainer, module, dm, ckpt_path=_last_ckpt(d, cfg, TOKENIZER_SECTIONS), weights_only=True)
    seconds = time.time() - start

    def write() -> dict:
        model = module.model.cpu().eval()
        metrics = evaluate_reconstruction(model, dm.dataset("test"))
        metrics.update(train_seconds=round(seconds, 1), steps=int(module.batches_done),
                       parameters=sum(p.numel() for p in model.parameters()))
        save_model(file, "tokenizer", model, cfg, {"metrics": metrics, "split": "test", **choice})
        _finish(d, logger, metrics, cfg)
        print(f"tokenizer: test PSNR {metrics['psnr']:.2f} dB, code usage {metrics['code_usage']:.1%}, "
              f"{seconds:.0f} s -> {file}")
        return metrics

    return _on_rank_zero(trainer, write)


def _on_rank_zero(trainer, write) -> dict:
    """Under DDP rank 0 alone evaluates, writes the model file and logs; the other ranks
    wait for it, so a following stage finds the file on every rank."""
    out = write() if trainer.is_global_zero else {}
    if trainer.world_size > 1:
        trainer.strategy.barrier("model file written")
    return out


def mlflow_logger_or_none(cfg: ExperimentConfig, run_name: str, log: bool, stage: str):
    """The stage's MLflow logger (a run named after the model's folder), or None."""
    if not log:
        return None
    return tracking.mlflow_logger(cfg, run_name, tags={"stage": stage}, stage=stage)


def tokenize(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Encode every split with the trained tokenizer once; returns the cache path. ``force``
    encodes again even when a cache exists."""
    tok_file = model_file(cfg, "tokenizer")
    if not tok_file.is_file():
        raise ConfigError(f"no tokenizer at {tok_file}: run `python -m maskgit_lab.train tokenizer` first")
    _check_same_settings(tok_file, "tokenizer", cfg, TOKENIZER_SECTIONS)
    tok, _, _ = load_model(tok_file, "tokenizer")
    sha = tokenizer_identity(tok_file)
    if force:
        cache_path(cfg.run_dir, sha, cfg.data).unlink(missing_ok=True)
    dm = build_image_datamodule(cfg.data, 256)
    return build_token_cache(tok, sha, dm, cfg.data, cfg.run_dir)


def train_transformer(cfg: ExperimentConfig, force: bool = False, log: bool = True,
                      kind: str = "transformer", folder: Path | None = None) -> dict:
    """Train (or reuse) a transformer on cached tokens in ``folder`` (default as for the
    tokenizer); returns its validation metrics.

    kind: "transformer" (MaskGIT, masked visual token modeling) or "ar_transformer" (the
    autoregressive baseline: same network, causal, raster order, same training settings).
    """
    Module = ARModule if kind == "ar_transformer" else MVTMModule
    d = Path(folder) if folder is not None else model_dir(cfg, kind)
    file = d / MODEL_FILES[kind]
    name = d.name
    t = cfg.transformer_train
    shards = None
    if cfg.data.token_shards:  # pre-tokenized shards: no images, no token cache
        shards = ShardDataModule(cfg.data.token_shards, t.batch_size, cfg.data.num_workers)
        tok_file = Path(shards.tokenizer_file)
    else:
        tok_file = model_file(cfg, "tokenizer")
    if file.is_file() and not force:
        # the masking schedule does not touch the autoregressive baseline
        ignore = ("schedule",) if kind == "ar_transformer" else ()
        payload = _check_same_settings(file, kind, cfg, TRANSFORMER_SECTIONS, ignore)
        if shards is None and not tok_file.is_file():
            raise ConfigError(f"{file} exists but its tokenizer {tok_file} is missing")
        expected = shards.tokenizer_sha if shards is not None else tokenizer_identity(tok_file)
        if payload["meta"].get("tokenizer_sha") != expected:
            raise ConfigError(f"{file} was trained on another tokenizer; pass --force to retrain")
        print(f"{name}: reusing {file}")
        return payload["meta"]["metrics"]
    if force and d.exists():
        shutil.rmtree(d)
    if shards is not None:
        tdm, sha = shards, shards.tokenizer_sha
    else:
        cache = load_token_cache(tokenize(cfg, force=force))
        sha = cache["tokenizer_sha"]  # the cache file is named by this hash, checked in tokenize()
        tdm = TokenDataModule(cache, t.batch_size)
    cfg = with_data_sizes(cfg, tdm.codebook_size, tdm.num_tokens, tdm.num_classes)
    L.seed_everything(t.seed, workers=True, verbose=False)
    n_batches = len(tdm.dataset("train")) // t.batch_size
    if n_batches < 1:
        raise ConfigError(f"the training split holds {len(tdm.dataset('train'))} token grids, fewer than one batch "
                          f"of transformer_train.batch_size={t.batch_size}: lower the batch size or use more data")
    module = Module(cfg)
    logger = mlflow_logger_or_none(cfg, name, log, kind)
    choice = stage_precision(cfg, t.precision, name, logger)
    trainer = _trainer(cfg, d, logger, t.max_steps, t.val_every, n_batches, choice["precision"])
    trainer.gradient_clip_val = t.grad_clip or None
    start = time.time()
    fit(trainer, module, tdm, ckpt_path=_last_ckpt(d, cfg, TRANSFORMER_SECTIONS), weights_only=True)
    seconds = time.time() - start
    final = trainer.validate(module, tdm, verbose=False)[0]
    acc_key = "token_acc" if kind == "ar_transformer" else "masked_acc"

    def write() -> dict:
        metrics = {
            "val_loss": final["val/loss"], f"val_{acc_key}": final[f"val/{acc_key}"],
            "train_seconds": round(seconds, 1), "steps": int(trainer.global_step),
            "parameters": module.model.num_parameters(), "ema": t.ema > 0,
        }
        meta = {"metrics": metrics, "tokenizer_file": str(tok_file), "tokenizer_sha": sha, **choice}
        save_model(file, kind, module.inference_model.cpu(), cfg, meta)
        _finish(d, logger, metrics, cfg)
        print(f"{name}: val loss {metrics['val_loss']:.3f}, {acc_key} "
              f"{metrics[f'val_{acc_key}']:.1%}, {seconds:.0f} s -> {file}")
        return metrics

    return _on_rank_zero(trainer, write)
