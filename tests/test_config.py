from pathlib import Path

import pytest
import torch

from maskgit_lab.config import from_dict, load_config, parse_overrides, to_dict, with_data_sizes
from maskgit_lab.errors import ConfigError
from maskgit_lab.models.transformer import MaskGITTransformer
from maskgit_lab.models.vqgan import VQGAN

EXPERIMENTS = sorted(Path("experiments").glob("*.yaml"))


def test_experiments_exist():
    names = {p.name for p in EXPERIMENTS}
    assert {"fmnist.yaml", "fmnist_smoke.yaml"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_loads_and_builds(path):
    cfg = load_config(path)
    big = cfg.tokenizer.resolution > 64
    with torch.device("meta" if big else "cpu"):  # paper-size models: shapes only
        tok = VQGAN(cfg.tokenizer)
        full = with_data_sizes(cfg, cfg.tokenizer.codebook_size, cfg.tokenizer.num_tokens, 10)
        tr = MaskGITTransformer(full.transformer)
    assert tok.cfg.num_tokens == tr.cfg.num_tokens
    assert 1 <= cfg.sampling.steps <= cfg.tokenizer.num_tokens
    assert from_dict(to_dict(full)) == full  # the config survives a checkpoint round trip


def test_paper_base_size():
    cfg = load_config("experiments/imagenet256.yaml")
    full = with_data_sizes(cfg, 1024, 256, 1000)
    with torch.device("meta"):
        tr = MaskGITTransformer(full.transformer)
    assert (tr.cfg.dim, tr.cfg.depth, tr.cfg.mlp_dim) == (768, 24, 3072)
    assert 170e6 < tr.num_parameters() < 180e6  # about 172M by count, as in the paper's release


def test_overrides_and_errors(tmp_path):
    cfg = load_config("experiments/fmnist.yaml", ["transformer.depth=2", "tokenizer_train.betas=[0.1, 0.2]"])
    assert cfg.transformer.depth == 2 and cfg.tokenizer_train.betas == (0.1, 0.2)
    assert parse_overrides(["a.b=3", "c=x"]) == {"a": {"b": 3}, "c": "x"}
    with pytest.raises(ConfigError, match="unknown key transformer.width; valid keys: .*depth"):
        load_config("experiments/fmnist.yaml", ["transformer.width=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config("experiments/fmnist.yaml", ["transformer.depth=deep"])
    with pytest.raises(ConfigError, match="unknown mask schedule"):
        load_config("experiments/fmnist.yaml", ["transformer_train.schedule=spiral"])
    with pytest.raises(ConfigError, match="unknown transformer preset 'huge'; valid: tiny"):
        load_config("experiments/fmnist.yaml", ["transformer.preset=huge"])
    with pytest.raises(ConfigError, match="steps T=100 is impossible"):
        load_config("experiments/fmnist.yaml", ["sampling.steps=100"])
    with pytest.raises(ConfigError, match="not found; available:"):
        load_config("experiments/nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_decode_mode_has_its_own_seeds_unless_seeds_are_given():
    path = "experiments/fmnist.yaml"
    train, decode = load_config(path), load_config(path, ["sweep.mode=decode"])
    assert decode.sweep.decode_seeds is not None and decode.sweep.seeds == decode.sweep.decode_seeds
    assert train.sweep.seeds != decode.sweep.seeds  # train mode keeps sweep.seeds
    assert load_config(path, ["sweep.mode=decode", "sweep.seeds=[5, 6]"]).sweep.seeds == (5, 6)
    assert load_config(path, ["sweep.mode=decode", "sweep.decode_seeds=null"]).sweep.seeds == train.sweep.seeds
    assert load_config(path, ["sweep.mode=decode", "sweep.decode_seeds=[3]"]).sweep.seeds == (3,)
    with pytest.raises(ConfigError, match=r"sweep.decode_seeds=\[1, 1\] must be one or more distinct"):
        load_config(path, ["sweep.mode=decode", "sweep.decode_seeds=[1, 1]"])
    with pytest.raises(ConfigError, match=r"sweep.decode_seeds\[0\] must be an integer"):
        load_config(path, ["sweep.decode_seeds=[x]"])


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E-4", 1e-4), (".5", 0.5), ("5.", 5.0), ("2.5e-3", 2.5e-3)])
def test_numbers_as_people_write_them(tmp_path, text, value):
    """YAML 1.1 reads 1e-3 as a string; in a config file and on the command line it is a number."""
    assert load_config("experiments/fmnist.yaml", [f"transformer_train.lr={text}"]).transformer_train.lr == value
    f = tmp_path / "c.yaml"
    f.write_text(f"transformer_train:\n  lr: {text}\n")
    assert load_config(f).transformer_train.lr == value
