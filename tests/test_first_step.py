"""Decoding with another model's first step (``maskgit_lab.first_step``): the wrapper routes
the fully masked grids to the donor, a one-step decode is the donor's own, a model that is
its own donor changes nothing, and the command on two smoke trainings (paired rows, reuse,
errors)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from smoke import SMOKE
from torch import nn

from maskgit_lab import first_step as FS
from maskgit_lab import train
from maskgit_lab.checkpoints import load_model
from maskgit_lab.config import load_config
from maskgit_lab.decoding.generate import generate_codes
from maskgit_lab.errors import ConfigError


class Constant(nn.Module):
    """Logits filled with ``value``: [B, N, K], or [M, K] at ``positions``."""

    def __init__(self, value: float, k: int = 5, n: int = 4, mask_id: int = 5) -> None:
        super().__init__()
        self.value, self.cfg = value, SimpleNamespace(num_tokens=n, codebook_size=k, mask_id=mask_id)

    def forward(self, codes, labels=None, positions=None):
        full = torch.full((*codes.shape, self.cfg.codebook_size), self.value)
        return full if positions is None else full[positions]


def test_blank_grids_go_to_the_donor_and_the_rest_to_the_model():
    wrapped = FS.FirstStepFrom(Constant(0.0), Constant(1.0))
    codes = torch.tensor([[5, 5, 5, 5], [5, 2, 5, 5], [5, 5, 5, 5]])
    out = wrapped(codes)
    assert out.shape == (3, 4, 5) and (out[0] == 1).all() and (out[1] == 0).all() and (out[2] == 1).all()
    positions = codes == 5
    sub = wrapped(codes, positions=positions)
    rows = positions.nonzero()[:, 0]
    assert sub.shape == (int(positions.sum()), 5) and torch.equal(sub[:, 0], (rows != 1).float())
    assert (wrapped(codes[1:2]) == 0).all() and (wrapped(codes[:1]) == 1).all()
    with pytest.raises(ConfigError, match="codebook"):
        FS.FirstStepFrom(Constant(0.0), Constant(1.0, k=7))


@pytest.fixture(scope="module")
def two_trainings(trained):
    """The smoke cosine model and a second training of it (transformer_train.seed=1)."""
    overrides, root = trained
    if not (root / "transformer-cosine-seed1" / "transformer.pt").is_file():
        assert train.main(["transformer", "--config", SMOKE, *overrides, "transformer_train.seed=1"]) == 0
    return overrides, root / "transformer-cosine", root / "transformer-cosine-seed1"


def test_one_step_decodes_are_the_donors_and_a_model_is_its_own_donor(two_trainings):
    overrides, first, second = two_trainings
    a, b = load_model(first / "transformer.pt", "transformer")[0], load_model(second / "transformer.pt", "transformer")[0]
    cfg = load_config(SMOKE, overrides).sampling
    labels = torch.arange(6) % 10

    def tokens(model, steps):
        dcfg = replace(cfg, steps=steps).validated(a.cfg.num_tokens)
        return generate_codes(model, labels, dcfg, torch.Generator().manual_seed(3)).tokens

    # T = 1: the only step starts from a blank grid, so it is all the donor's
    assert torch.equal(tokens(FS.FirstStepFrom(a, b), 1), tokens(b, 1))
    assert not torch.equal(tokens(a, 1), tokens(b, 1))
    # a model as its own donor decodes exactly as itself; another donor changes the samples
    assert torch.equal(tokens(FS.FirstStepFrom(a, a), 4), tokens(a, 4))
    assert not torch.equal(tokens(FS.FirstStepFrom(a, b), 4), tokens(a, 4))


def test_whole_masked_training_has_its_own_folder_and_leaves_the_plain_model_alone(two_trainings, capsys):
    overrides, _, second = two_trainings
    before = second.joinpath("transformer.pt").stat().st_mtime_ns
    args = ["transformer", "--config", SMOKE, *overrides, "transformer_train.seed=1"]
    assert train.main([*args, "transformer_train.blank_share=0.5"]) == 0
    blank = second.parent / "transformer-cosine-blank0.5-seed1"
    model, cfg, _ = load_model(blank / "transformer.pt", "transformer")
    assert cfg.transformer_train.blank_share == 0.5
    plain = load_model(second / "transformer.pt", "transformer")[0]
    # same seed and data order, other masks: other weights
    assert not torch.equal(model.state_dict()["tok_emb.weight"], plain.state_dict()["tok_emb.weight"])
    # the plain training is reused, not retrained or overwritten
    capsys.readouterr()
    assert train.main(args) == 0
    assert "transformer-cosine-seed1: reusing" in capsys.readouterr().out
    assert second.joinpath("transformer.pt").stat().st_mtime_ns == before


def test_command_pairs_reuses_and_reports(two_trainings, tmp_path):
    overrides, first, second = two_trainings
    out = tmp_path / "first_step.csv"
    args = [f"{first}={second}", f"{second}={first}", f"{first}={first}", "--config", SMOKE, *overrides,
            "--n", "40", "--seeds", "0", "1", "--steps", "4", "--batch", "20", "--out", str(out)]
    assert FS.main(args) == 0
    rows = pd.read_csv(out)
    assert len(rows) == 3 * 2 * 2 and set(rows["first_step"]) == {"own", "donor"}
    assert rows["fid"].notna().all() and (rows["fid"] > 0).all()
    own = rows[rows["first_step"] == "own"].groupby("model")["fid"].apply(list)
    # the same model on the same seeds: its own decodings agree whoever the donor is
    same = rows[(rows["model"] == first.name) & (rows["first_step"] == "own")].sort_values("seed")
    assert len(own) == 2 and len(same) == 4
    assert same.groupby("seed")["fid"].nunique().eq(1).all()
    # its own donor: the "donor" decodings equal the own ones
    self_pair = rows[(rows["model"] == first.name) & (rows["donor"] == first.name)].pivot(index="seed", columns="first_step", values="fid")
    assert (self_pair["own"] == self_pair["donor"]).all()
    text = out.with_suffix(".md").read_text()
    assert "Whose first step" in text and f"| {first.name} | {second.name} | 4 | 2 |" in text
    assert "## Over trainings" in text  # two cosine models with cosine donors

    # a second run reuses every row (a planted value survives) and decodes nothing new
    rows.loc[0, "fid"] = 999.0
    rows.to_csv(out, index=False)
    assert FS.main(args) == 0
    assert pd.read_csv(out)["fid"].iloc[0] == 999.0


@pytest.mark.parametrize("pair, extra, message", [
    ("{first}", [], "MODEL=DONOR"),
    ("{first}={root}/nowhere", [], "not found"),
    ("{first}={first}", ["--seeds", "0"], "at least 2 distinct seeds"),
    ("{first}={first}", ["--out", "x.json"], ".csv"),
    ("{first}={first}", ["--steps", "0"], "--steps"),
])
def test_bad_arguments_fail_in_one_line(two_trainings, tmp_path, capsys, pair, extra, message):
    overrides, first, _ = two_trainings
    arg = pair.format(first=first, root=first.parent)
    with pytest.raises(SystemExit) as exc:
        FS.main([arg, "--config", SMOKE, *overrides, *[e.replace("x.json", str(tmp_path / "x.json")) for e in extra]])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.glob("x*"))
