"""Fashion-MNIST from the standard idx ``.gz`` files, as a LightningDataModule.

Where the files come from, in order: ``data.root`` in the config, the environment
variable ``MASKGIT_FMNIST_DIR``, the folder of Debian's ``dataset-fashion-mnist``
package, and, only with ``data.download: true`` on a machine with internet,
torchvision's downloader. The official 10k test split is kept for evaluation only;
validation images are carved from the train split with a fixed seed.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchvision.datasets import FashionMNIST

from maskgit_lab.config import DataConfig
from maskgit_lab.data.base import SplitDataModule
from maskgit_lab.errors import ConfigError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "MASKGIT_FMNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, unreadable
        raise ConfigError(f"{path} cannot be read as an idx file ({type(exc).__name__}: {exc}); "
                          "restore the dataset file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ConfigError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


def find_fmnist(cfg: DataConfig) -> Path:
    """Return the folder holding the four idx files, or raise a ConfigError saying how to get them."""
    # A folder the user names must hold the dataset: a typo is an error, never a silent
    # fallback to another copy.
    for src, value in (("data.root", cfg.root), (ENV_VAR, os.environ.get(ENV_VAR, ""))):
        if value:
            folder = Path(value)
            if _has_files(folder):
                return folder
            if not (cfg.download and src == "data.root"):
                missing = [f for pair in FILES.values() for f in pair if not (folder / f).is_file()]
                raise ConfigError(f"{src}={value!r} does not hold Fashion-MNIST: missing {', '.join(missing)} "
                                  f"(give the folder with the four idx .gz files, or unset {src})")
    candidates: list[tuple[str, Path]] = [("Debian package", DEBIAN_DIR)]
    for _, folder in candidates:
        if _has_files(folder):
            return folder
    if cfg.download:
        target = Path(cfg.root or "data/fashion-mnist")
        try:
            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise ConfigError(f"downloading Fashion-MNIST into {target} failed: {exc}") from None
        raw = target / "FashionMNIST" / "raw"
        if _has_files(raw):
            return raw
    looked = ", ".join(f"{src}: {p}" for src, p in candidates)
    raise ConfigError(
        "Fashion-MNIST idx files not found (looked in " + looked + "). Get them one of three ways: "
        f"(1) set data.root or ${ENV_VAR} to a folder holding {', '.join(FILES['train'] + FILES['test'])}; "
        "(2) apt-get install dataset-fashion-mnist (installs to /usr/share/datasets/fashion-mnist); "
        "(3) on a machine with internet, set data.download=true to use torchvision's downloader"
    )


def load_split(folder: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [M, 1, size, size] float in [-1, 1] (zero-padded, centred) and labels [M] long."""
    img_file, lbl_file = FILES[split]
    images = read_idx(folder / img_file)
    labels = read_idx(folder / lbl_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ConfigError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.copy()).float().div_(127.5).sub_(1.0)[:, None]
    pad = size - x.shape[-1]
    if pad < 0:
        raise ConfigError(f"data.image_size={size} is smaller than the {x.shape[-1]}px images")
    if pad:
        # Pad with the background value (-1 = black) so the garment stays centred.
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=-1.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed, seeded partition of range(n) into (train indices, val indices)."""
    if not 0 < val_size < n:
        raise ConfigError(f"data.val_size={val_size} must lie between 1 and {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def _limit(t: torch.Tensor, n: int) -> torch.Tensor:
    return t[:n] if n else t


class FashionMNISTDataModule(SplitDataModule):
    """Batches of (images [B, 1, S, S] in [-1, 1], labels [B]); S = data.image_size."""

    num_classes = 10
    in_channels = 1
    class_names = CLASS_NAMES

    def __init__(self, cfg: DataConfig, batch_size: int = 64) -> None:
        super().__init__(batch_size, cfg.num_workers)
        self.cfg = cfg
        self.folder = find_fmnist(cfg)  # fail early, before any training starts
        self._splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        c = self.cfg
        x, y = load_split(self.folder, "train", c.image_size)
        tr, va = split_train_val(len(x), c.val_size, c.split_seed)
        tr, va = _limit(tr, c.limit_train), _limit(va, c.limit_val)
        xt, yt = load_split(self.folder, "test", c.image_size)
        self._splits = {
            "train": TensorDataset(x[tr], y[tr]),
            "val": TensorDataset(x[va], y[va]),
            "test": TensorDataset(_limit(xt, c.limit_test), _limit(yt, c.limit_test)),
        }

    def dataset(self, split: str) -> TensorDataset:
        self.setup()
        return self._splits[split]
