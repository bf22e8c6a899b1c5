"""Token caches: every split encoded once by a frozen tokenizer, stored on disk.

The cache file name carries the tokenizer file's content hash and a hash of the data
settings and of the data files' bytes, so a retrained tokenizer, a different split or
changed images never reuse stale codes and stage 2 never re-encodes images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from maskgit_lab.config import DataConfig, to_dict
from maskgit_lab.data.fmnist import FILES as FMNIST_FILES
from maskgit_lab.data.fmnist import find_fmnist
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import atomic_write, content_digest, content_key

SPLITS = ("train", "val", "test")


def data_files_identity(cfg: DataConfig) -> list:
    """What the data files hold: the content digest of each file read (of every image, for an
    ImageFolder), so caches made from other bytes (another MASKGIT_FMNIST_DIR, an image
    rewritten in place) are never reused, while a copy of the same data keeps its caches."""
    if cfg.name == "fmnist":
        folder = find_fmnist(cfg)
        return [[f, content_digest(folder / f)] for pair in FMNIST_FILES.values() for f in pair]
    root = Path(cfg.root)
    files = sorted(p for split in ("train", "val") if (root / split).is_dir()
                   for p in (root / split).rglob("*") if p.is_file())
    interval = 0.1 if sys.stderr.isatty() else 10.0
    digests = [[p.relative_to(root).as_posix(), content_digest(p)]
               for p in tqdm(files, desc="hash data files", mininterval=interval, disable=len(files) < 10_000,
                             dynamic_ncols=True)]
    return [content_key(digests, 64)]


def data_key(cfg: DataConfig) -> str:
    """Hash of the data settings that change which images (and pixels) get encoded, and of
    the identity of the files they come from."""
    d = to_dict(cfg)
    for k in ("num_workers", "download", "hflip", "token_shards"):
        d.pop(k)
    d["files"] = data_files_identity(cfg)
    return content_key(d, 12)


def cache_path(run_dir: Path, tokenizer_sha: str, cfg: DataConfig) -> Path:
    return Path(run_dir) / "tokens" / f"tokens-{tokenizer_sha}-{data_key(cfg)}.pt"


@torch.inference_mode()
def encode_split(tokenizer, dataset, batch_size: int = 256, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a dataset of (image, label) -> codes [M, h, w] (int16/int32) and labels [M]."""
    device = next(tokenizer.parameters()).device
    dtype = torch.int16 if tokenizer.cfg.codebook_size <= torch.iinfo(torch.int16).max else torch.int32
    codes, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    # On a terminal the bar redraws in place; in a log file it writes a line every 10 s.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    for x, y in tqdm(loader, desc=f"tokenize {desc}", mininterval=interval, dynamic_ncols=True):
        codes.append(tokenizer.encode(x.to(device)).to("cpu", dtype))
        labels.append(torch.as_tensor(y).long())
    return torch.cat(codes), torch.cat(labels)


def build_token_cache(tokenizer, tokenizer_sha: str, datamodule, cfg: DataConfig, run_dir: Path) -> Path:
    """Encode every split once and write the cache atomically; reuse it if present."""
    path = cache_path(run_dir, tokenizer_sha, cfg)
    if path.is_file():
        try:
            load_token_cache(path, tokenizer_sha)
            return path
        except ConfigError as exc:
            print(f"warning: {exc}; encoding the splits again", file=sys.stderr)
            path.unlink()
    tokenizer.eval()
    payload: dict = {"tokenizer_sha": tokenizer_sha, "data": to_dict(cfg), "codes": {}, "labels": {}}
    for split in SPLITS:
        c, y = encode_split(tokenizer, datamodule.dataset(split), desc=split)
        payload["codes"][split], payload["labels"][split] = c, y
    payload["codebook_size"] = tokenizer.cfg.codebook_size
    payload["num_classes"] = int(datamodule.num_classes)
    atomic_write(path, lambda p: torch.save(payload, p))
    return path


def load_token_cache(path: Path, tokenizer_sha: str | None = None) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"token cache {str(p)!r} not found; run the tokenize step first")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
        ok = isinstance(payload, dict) and all(
            isinstance(payload.get(k), dict) and set(SPLITS) <= set(payload[k]) for k in ("codes", "labels"))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise ConfigError(f"token cache {p} is unreadable ({type(exc).__name__})") from None
    if not ok:
        raise ConfigError(f"token cache {p} is not a token cache (missing splits)")
    if tokenizer_sha is not None and payload.get("tokenizer_sha") != tokenizer_sha:
        raise ConfigError(
            f"token cache {p} was made by tokenizer {payload.get('tokenizer_sha')}, not {tokenizer_sha}"
        )
    return payload


class TokenDataModule(L.LightningDataModule):
    """Batches of (codes [B, N] long, labels [B] long) from a token cache."""

    def __init__(self, cache: dict, batch_size: int = 128) -> None:
        super().__init__()
        self.cache = cache
        self.batch_size = batch_size
        self.codebook_size = int(cache["codebook_size"])
        self.num_classes = int(cache["num_classes"])
        self.num_tokens = int(cache["codes"]["train"][0].numel())

    def dataset(self, split: str) -> TensorDataset:
        codes = self.cache["codes"][split]
        return TensorDataset(codes.reshape(codes.shape[0], -1).long(), self.cache["labels"][split])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=256, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), batch_size=256, shuffle=False)
