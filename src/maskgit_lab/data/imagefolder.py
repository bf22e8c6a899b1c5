"""A generic ImageFolder datamodule (``root/train/<class>/*.jpg``, ``root/val/<class>/*``).

Training: resize the short side, random crop, optional horizontal flip. Evaluation:
resize and centre crop. Images come out in [-1, 1], labels as class indices.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from maskgit_lab.config import DataConfig
from maskgit_lab.data.base import SplitDataModule
from maskgit_lab.errors import ConfigError


def image_transforms(size: int, train: bool, hflip: bool):
    ops = [T.Resize(size)]
    ops.append(T.RandomCrop(size) if train else T.CenterCrop(size))
    if train and hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])]
    return T.Compose(ops)


def load_rgb(path: str) -> Image.Image:
    """An image file as RGB; an unreadable one is a one-line error naming the file."""
    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"image {path} is unreadable ({type(exc).__name__}); remove or replace it") from None


def image_folder(folder: Path, transform) -> ImageFolder:
    """torchvision's ImageFolder over ``folder``; an empty one is a one-line error."""
    try:
        return ImageFolder(str(folder), transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders, or no images in them
        raise ConfigError(f"{folder} holds no images in class folders ({exc})") from None


class ImageFolderDataModule(SplitDataModule):
    """Batches of (images [B, 3, S, S] in [-1, 1], labels [B]) from an ImageFolder tree."""

    in_channels = 3

    def __init__(self, cfg: DataConfig, batch_size: int = 64) -> None:
        super().__init__(batch_size, cfg.num_workers)
        self.cfg = cfg
        root = Path(cfg.root)
        if not cfg.root or not (root / "train").is_dir():
            raise ConfigError(
                f"data.root={cfg.root!r} must be a folder with train/ (and val/) class subfolders "
                "of images, as torchvision's ImageFolder expects"
            )
        self.root = root
        self._splits: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        c = self.cfg
        train = image_folder(self.root / "train", image_transforms(c.image_size, True, c.hflip))
        val_dir = self.root / "val"
        if val_dir.is_dir():
            val = image_folder(val_dir, image_transforms(c.image_size, False, False))
            if val.classes != train.classes:
                raise ConfigError(f"{val_dir} and {self.root / 'train'} hold different class folders")
        else:
            raise ConfigError(f"{val_dir} not found: the evaluation split must be its own folder")
        self.classes = train.classes
        lim = {"train": c.limit_train, "val": c.limit_val}
        self._splits = {
            name: Subset(ds, range(min(lim[name], len(ds)))) if lim[name] else ds
            for name, ds in (("train", train), ("val", val))
        }

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    def dataset(self, split: str):
        self.setup()
        if split == "test":
            split = "val"  # ImageNet practice: the val split is the evaluation set
        return self._splits[split]
