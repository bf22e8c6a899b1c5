import gzip

import numpy as np
import pytest
import torch

from maskgit_lab.config import DataConfig
from maskgit_lab.data import build_image_datamodule
from maskgit_lab.data.fmnist import FashionMNISTDataModule, find_fmnist, read_idx, split_train_val
from maskgit_lab.data.imagefolder import ImageFolderDataModule
from maskgit_lab.data.tokens import TokenDataModule, build_token_cache, cache_path, load_token_cache
from maskgit_lab.errors import ConfigError
from maskgit_lab.models.vqgan import VQGAN, TokenizerConfig


def test_read_idx_matches_written_arrays(fmnist_dir):
    from conftest import make_images

    x, y = make_images(600, 0)
    assert np.array_equal(read_idx(fmnist_dir / "train-images-idx3-ubyte.gz"), x)
    assert np.array_equal(read_idx(fmnist_dir / "train-labels-idx1-ubyte.gz"), y)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ConfigError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(short)


def test_datamodule_splits_padding_and_range(fmnist_dir):
    dm = FashionMNISTDataModule(DataConfig(root=str(fmnist_dir), val_size=100), batch_size=32)
    train, val, test = dm.dataset("train"), dm.dataset("val"), dm.dataset("test")
    assert (len(train), len(val), len(test)) == (500, 100, 120)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 32, 32) and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    # 2-pixel border of background on each side, the 28x28 image centred
    full = test.tensors[0]
    assert torch.all(full[:, :, :2] == -1) and torch.all(full[:, :, -2:] == -1)
    assert torch.all(full[:, :, :, :2] == -1) and torch.all(full[:, :, :, -2:] == -1)


def test_validation_split_is_fixed_and_disjoint():
    a_tr, a_va = split_train_val(1000, 100, seed=0)
    b_tr, b_va = split_train_val(1000, 100, seed=0)
    c_tr, c_va = split_train_val(1000, 100, seed=1)
    assert torch.equal(a_va, b_va) and not torch.equal(a_va, c_va)
    assert len(set(a_tr.tolist()) & set(a_va.tolist())) == 0 and len(a_tr) + len(a_va) == 1000
    with pytest.raises(ConfigError, match="data.val_size=10 must lie between 1 and 9"):
        split_train_val(10, 10, seed=0)


def test_env_var_lookup(fmnist_dir, monkeypatch):
    monkeypatch.setenv("MASKGIT_FMNIST_DIR", str(fmnist_dir))
    assert find_fmnist(DataConfig()) == fmnist_dir


def test_imagefolder_datamodule(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cats", "dogs"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=32, hflip=True)
    dm = build_image_datamodule(cfg, batch_size=2)
    assert isinstance(dm, ImageFolderDataModule) and dm.num_classes == 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    # evaluation is deterministic (centre crop, no flip)
    assert torch.equal(dm.dataset("val")[0][0], dm.dataset("val")[0][0])
    with pytest.raises(ConfigError, match="train/"):
        ImageFolderDataModule(DataConfig(name="imagefolder", root=str(tmp_path / "nope")))


def test_token_cache_keyed_by_tokenizer(fmnist_dir, tmp_path):
    cfg = DataConfig(root=str(fmnist_dir), val_size=100, limit_train=64, limit_val=16, limit_test=16)
    dm = FashionMNISTDataModule(cfg)
    tok = VQGAN(TokenizerConfig(ch=8, z_channels=8, codebook_size=16, codebook_dim=4)).eval()
    path = build_token_cache(tok, "aaaa", dm, cfg, tmp_path)
    assert path == cache_path(tmp_path, "aaaa", cfg) and path.is_file()
    assert cache_path(tmp_path, "bbbb", cfg) != path
    cache = load_token_cache(path, "aaaa")
    assert cache["codes"]["train"].shape == (64, 8, 8)
    x = dm.dataset("val").tensors[0]
    assert torch.equal(cache["codes"]["val"].long(), tok.encode(x))
    with pytest.raises(ConfigError, match="made by tokenizer aaaa"):
        load_token_cache(path, "bbbb")
    tdm = TokenDataModule(cache, batch_size=8)
    codes, labels = next(iter(tdm.train_dataloader()))
    assert codes.shape == (8, 64) and codes.dtype == torch.long and tdm.num_classes == 10
