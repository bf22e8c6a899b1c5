"""Shared loader plumbing for the image datamodules."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class SplitDataModule(L.LightningDataModule):
    """A datamodule over named splits: subclasses implement ``dataset(split)``.

    Training batches are shuffled with the last partial batch dropped; validation and
    test batches keep their order, so evaluations see the same images every time.
    """

    def __init__(self, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers

    def dataset(self, split: str) -> Dataset:  # pragma: no cover - every subclass overrides it
        raise TypeError(f"{type(self).__name__} must define dataset(split)")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, drop_last=shuffle,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
