"""Datasets: Fashion-MNIST (the default) and ImageFolder trees as LightningDataModules, token
caches and pre-tokenized shards for stage 2, and the DVC data-preparation stage."""

from __future__ import annotations

import lightning as L

from maskgit_lab.config import DataConfig, ExperimentConfig
from maskgit_lab.data.fmnist import CLASS_NAMES, FashionMNISTDataModule
from maskgit_lab.data.imagefolder import ImageFolderDataModule
from maskgit_lab.errors import ConfigError

DATAMODULES: dict[str, type[L.LightningDataModule]] = {
    "fmnist": FashionMNISTDataModule,
    "imagefolder": ImageFolderDataModule,
}


def build_image_datamodule(cfg: DataConfig, batch_size: int) -> L.LightningDataModule:
    """The image datamodule named by ``cfg.name``."""
    if cfg.name not in DATAMODULES:
        raise ConfigError(f"unknown data.name {cfg.name!r}; valid: {', '.join(DATAMODULES)}")
    return DATAMODULES[cfg.name](cfg, batch_size)


def class_names(cfg: ExperimentConfig, num_classes: int) -> list[str]:
    """Names of the experiment's classes, for figure labels."""
    if cfg.data.name == "fmnist":
        return list(CLASS_NAMES)
    return [f"class {i}" for i in range(num_classes)]
