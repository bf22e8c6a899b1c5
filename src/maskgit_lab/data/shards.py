"""Pre-tokenized shards: a whole split's codes as compact uint16 arrays, with labels, so the
transformer trains without touching images (ImageNet train: 1.28M x 256 codes = 655 MB).

    python -m maskgit_lab.data.shards --config experiments/imagenet256.yaml \\
        --tokenizer runs/imagenet256/released/tokenizer.pt --split train --out runs/imagenet256/shards \\
        [--shard-size 10000] [--processes N]

Layout: ``<out>/<split>/shard-00000.codes.npy`` (uint16 [m, h, w]) and ``.labels.npy``
(int32 [m]), then ``<out>/<split>/index.json`` (tokenizer hash, data key, counts), written
last. Every split is encoded with the evaluation transform (resize, centre crop), so the
codes are deterministic. Resumable: finished shards are kept and only missing ones encoded.
With several GPUs one process per GPU takes every N-th shard; on CPU, ``--processes``.
Train from the shards with ``data.token_shards=<out>``.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from maskgit_lab.checkpoints import load_model, tokenizer_identity
from maskgit_lab.config import ExperimentConfig, from_dict, load_config, to_dict
from maskgit_lab.data.fmnist import FashionMNISTDataModule
from maskgit_lab.data.imagefolder import image_folder, image_transforms
from maskgit_lab.data.tokens import data_key
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import atomic_write, atomic_write_text, check_output_dir

SHARD_SPLITS = ("train", "val")


def split_dataset(cfg: ExperimentConfig, split: str) -> Dataset:
    """A split's (image, label) pairs with the deterministic evaluation transform."""
    if cfg.data.name == "fmnist":
        return FashionMNISTDataModule(cfg.data).dataset(split)
    folder = Path(cfg.data.root) / split
    if not cfg.data.root or not folder.is_dir():
        raise ConfigError(f"{folder} not found: data.root must hold train/ and val/ ImageFolder trees")
    ds = image_folder(folder, image_transforms(cfg.data.image_size, False, False))
    limit = {"train": cfg.data.limit_train, "val": cfg.data.limit_val}.get(split, 0)
    return Subset(ds, range(min(limit, len(ds)))) if limit else ds


def _shard_files(folder: Path, i: int) -> tuple[Path, Path]:
    return folder / f"shard-{i:05d}.codes.npy", folder / f"shard-{i:05d}.labels.npy"


def _shard_done(folder: Path, i: int, count: int) -> bool:
    codes, labels = _shard_files(folder, i)
    if not (codes.is_file() and labels.is_file()):
        return False
    try:
        return len(np.load(codes, mmap_mode="r")) == count and len(np.load(labels, mmap_mode="r")) == count
    except (ValueError, OSError):
        return False


def _encode_worker(rank: int, world: int, cfg_dict: dict, tokenizer_file: str, split: str, folder: str,
                   shard_size: int, device_kind: str, threads: int) -> None:
    """Encode shards rank, rank + world, ... that are not finished yet."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}") if device_kind == "cuda" else torch.device("cpu")
    cfg = from_dict(cfg_dict)
    tok, _, _ = load_model(tokenizer_file, "tokenizer")
    tok = tok.to(device)
    ds = split_dataset(cfg, split)
    out = Path(folder)
    n_shards = -(-len(ds) // shard_size)
    mine = [i for i in range(rank, n_shards, world)
            if not _shard_done(out, i, min(shard_size, len(ds) - i * shard_size))]
    for i in tqdm(mine, desc=f"{split} shards (worker {rank})", position=rank, disable=not mine):
        idx = range(i * shard_size, min((i + 1) * shard_size, len(ds)))
        loader = DataLoader(Subset(ds, idx), batch_size=64, num_workers=cfg.data.num_workers)
        codes, labels = [], []
        with torch.inference_mode():
            for x, y in loader:
                codes.append(tok.encode(x.to(device)).cpu().numpy().astype(np.uint16))
                labels.append(np.asarray(y, dtype=np.int32))
        c_file, l_file = _shard_files(out, i)
        # labels first: a shard counts as done once its codes file exists with the right length
        for target, arrays in ((l_file, labels), (c_file, codes)):
            array = np.concatenate(arrays)
            atomic_write(target, lambda p, a=array: np.save(p, a, allow_pickle=False))


def write_shards(cfg: ExperimentConfig, tokenizer_file: str | Path, split: str, out: str | Path,
                 shard_size: int = 10000, processes: int = 0) -> Path:
    """Encode ``split`` into shards under ``out/split`` (resumable); returns the index path."""
    if split not in SHARD_SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SHARD_SPLITS)}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    tok, _, _ = load_model(tokenizer_file, "tokenizer")  # checks the file before any work
    if tok.cfg.codebook_size > np.iinfo(np.uint16).max + 1:
        raise ConfigError(f"codebook of {tok.cfg.codebook_size} codes does not fit uint16 shards")
    ds = split_dataset(cfg, split)
    folder = Path(out) / split
    folder.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    kind = "cuda" if gpus else "cpu"
    world = gpus if gpus else max(1, processes or 1)
    threads = max(1, (os.cpu_count() or 1) // world) if kind == "cpu" else 0
    args = (world, to_dict(cfg), str(tokenizer_file), split, str(folder), shard_size, kind, threads)
    if world == 1:
        _encode_worker(0, *args)
    else:
        torch.multiprocessing.spawn(_encode_worker, args=args, nprocs=world, join=True)
    n_shards = -(-len(ds) // shard_size)
    counts = [min(shard_size, len(ds) - i * shard_size) for i in range(n_shards)]
    missing = [i for i, c in enumerate(counts) if not _shard_done(folder, i, c)]
    if missing:
        raise ConfigError(f"shards {missing[:5]} of {folder} are missing after encoding; run the command again")
    classes = getattr(getattr(ds, "dataset", ds), "classes", None)
    index = {
        "split": split, "tokenizer_file": str(tokenizer_file), "tokenizer_sha": tokenizer_identity(tokenizer_file),
        "data_key": data_key(cfg.data), "codebook_size": tok.cfg.codebook_size, "grid": tok.cfg.grid_size,
        "num_classes": len(classes) if classes else 10, "total": len(ds),
        "shards": [{"codes": _shard_files(folder, i)[0].name, "labels": _shard_files(folder, i)[1].name,
                    "count": c} for i, c in enumerate(counts)],
    }
    return atomic_write_text(folder / "index.json", json.dumps(index, indent=1) + "\n")


def read_index(root: str | Path, split: str) -> dict:
    p = Path(root) / split / "index.json"
    if not p.is_file():
        raise ConfigError(f"no token shards at {p.parent}: run `python -m maskgit_lab.data.shards --split {split}` first")
    return json.loads(p.read_text())


class ShardDataset(Dataset):
    """(codes [N] long, label) pairs from a split's shards, memory-mapped."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.index = read_index(root, split)
        folder = Path(root) / split
        try:
            self.codes = [np.load(folder / s["codes"], mmap_mode="r") for s in self.index["shards"]]
            self.labels = [np.load(folder / s["labels"], mmap_mode="r") for s in self.index["shards"]]
        except (OSError, ValueError, EOFError) as exc:  # a truncated or missing shard
            raise ConfigError(f"token shards in {folder} are unreadable ({type(exc).__name__}: {exc}); "
                              "write them again with python -m maskgit_lab.data.shards") from None
        self.starts = np.cumsum([0] + [s["count"] for s in self.index["shards"]]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int):
        s = bisect.bisect_right(self.starts, i) - 1
        j = i - self.starts[s]
        codes = torch.from_numpy(self.codes[s][j].astype(np.int64)).flatten()
        return codes, int(self.labels[s][j])


class ShardDataModule(L.LightningDataModule):
    """TokenDataModule's interface over shards: the transformer trains from codes only."""

    def __init__(self, root: str | Path, batch_size: int = 256, num_workers: int = 0) -> None:
        super().__init__()
        self.root, self.batch_size, self.num_workers = Path(root), batch_size, num_workers
        self.train_index, self.val_index = read_index(root, "train"), read_index(root, "val")
        if self.train_index["tokenizer_sha"] != self.val_index["tokenizer_sha"]:
            raise ConfigError(f"{root}: the train and val shards come from different tokenizers")
        self.tokenizer_sha = self.train_index["tokenizer_sha"]
        self.tokenizer_file = self.train_index["tokenizer_file"]
        self.codebook_size = int(self.train_index["codebook_size"])
        self.num_classes = int(self.train_index["num_classes"])
        self.num_tokens = int(self.train_index["grid"]) ** 2

    def dataset(self, split: str) -> ShardDataset:
        return ShardDataset(self.root, "val" if split == "test" else split)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=256, shuffle=False, num_workers=self.num_workers)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.data.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/imagenet256.yaml")
    parser.add_argument("--tokenizer", required=True, help="tokenizer model file (trained or imported)")
    parser.add_argument("--split", choices=SHARD_SPLITS, action="append",
                        help="split(s) to encode (repeatable; default: train and val)")
    parser.add_argument("--out", required=True, help="shard folder (then train with data.token_shards=OUT)")
    parser.add_argument("--shard-size", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=0, help="CPU worker processes (GPUs: one per GPU)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    check_output_dir(args.out, "--out")
    cfg = load_config(args.config, args.overrides)
    for split in args.split or SHARD_SPLITS:
        index = write_shards(cfg, args.tokenizer, split, args.out, args.shard_size, args.processes)
        info = json.loads(index.read_text())
        print(f"{split}: {info['total']} images in {len(info['shards'])} shards -> {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
