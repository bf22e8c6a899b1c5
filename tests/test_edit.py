"""Editing: regions in token space, known tokens kept exactly, the single-image command,
and the Table 2 sweep on the smoke preset."""

import json

import pandas as pd
import pytest
import torch
from helpers import SMOKE, model_path, sweep_args

from maskgit_lab import edit
from maskgit_lab.decoding import regions
from maskgit_lab.decoding.sampler import DecodeConfig
from maskgit_lab.errors import ConfigError
from maskgit_lab.sweeps import editing


def test_regions_cover_the_right_tokens():
    centre = regions.box_region(8, regions.center_box(0.5)).reshape(8, 8)
    assert centre.sum() == 16 and centre[2:6, 2:6].all()
    right = regions.side_region(8, "right").reshape(8, 8)
    assert right[:, 4:].all() and not right[:, :4].any()
    top = regions.side_region(8, "top", 0.25).reshape(8, 8)
    assert top[:2].all() and not top[2:].any()
    # a box edge inside a patch takes that patch; on a border it does not take the next
    assert regions.box_region(8, (0.0, 0.0, 0.13, 0.13)).reshape(8, 8)[:2, :2].all()
    assert regions.box_region(8, (0.0, 0.0, 0.125, 0.125)).sum() == 1
    for bad in ((0.5, 0, 0.5, 1), (0, 0, 1.2, 1)):
        with pytest.raises(ConfigError, match="0 <= x0 < x1 <= 1"):
            regions.box_region(8, bad)
    with pytest.raises(ConfigError, match="valid: left, right, top, bottom"):
        regions.side_region(8, "middle")


class Tiny(torch.nn.Module):
    """A stand-in transformer: random logits (the decoder is what is under test here)."""

    def __init__(self):
        super().__init__()
        self.cfg = type("C", (), {"num_tokens": 16, "mask_id": 8, "null_label": 3})()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, labels):
        g = torch.Generator().manual_seed(int(tokens.sum()))
        return torch.randn(*tokens.shape, 8, generator=g)


def test_edit_keeps_every_known_token():
    codes = torch.randint(0, 8, (3, 16))
    region = regions.side_region(4, "right")
    res = regions.edit_codes(Tiny(), codes, region, torch.tensor([0, 1, 2]), DecodeConfig(steps=4),
                          torch.Generator().manual_seed(0), return_history=True)
    assert torch.equal(res.tokens[:, ~region], codes[:, ~region])
    assert (res.tokens < 8).all() and res.states.shape == (4, 3, 16)
    # the first step starts from the 8 masked tokens of each row, not from an empty grid
    assert (res.states[0] == 8).sum(1).max() < 8
    with pytest.raises(ConfigError, match="covers no token"):
        regions.edit_codes(Tiny(), codes, torch.zeros(16, dtype=torch.bool), torch.tensor([0, 1, 2]),
                        DecodeConfig(steps=4), torch.Generator())


def test_edit_command_and_bad_input(trained, tmp_path, capsys):
    overrides, run_dir = trained
    ckpt = str(model_path(overrides))
    out, process = tmp_path / "edit.png", tmp_path / "steps.png"
    base = ["--config", SMOKE, "--checkpoint", ckpt]
    # an image file of another size: padded (smaller) or resized (larger) to the tokenizer's 32 px
    from PIL import Image

    Image.fromarray((torch.rand(28, 20) * 255).byte().numpy()).save(tmp_path / "in.png")
    assert edit.main([*base, "--input", str(tmp_path / "in.png"), "--class", "3", "--mode", "outpaint",
                      "--side", "left", "--out", str(out), "--process", str(process)]) == 0
    assert out.stat().st_size > 0 and process.stat().st_size > 0
    assert "32/64 tokens regenerated" in capsys.readouterr().out
    for args, message in (
        (["--input", str(tmp_path / "in.png"), "--mode", "class"], "--mode class needs --class"),
        (["--input", str(tmp_path / "nope.png"), "--class", "1"], "not found"),
        (["--input", str(tmp_path / "in.png"), "--class", "10"], "valid: 0..9"),
        (["--input", str(tmp_path / "in.png"), "--class", "1", "--box", "1,2"], "four fractions"),
        (["--input", str(tmp_path / "in.png"), "--class", "1", "--steps", "99"], "impossible"),
    ):
        bad = tmp_path / "bad.png"
        with pytest.raises(SystemExit) as exc:
            edit.main([*base, *args, "--out", str(bad)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, (args, err)
        assert not bad.exists()


def test_editing_table(trained, tmp_path):
    assert editing.main(sweep_args(trained, tmp_path)) == 0
    table = pd.read_csv(tmp_path / "results" / "editing.csv")
    assert list(table["regenerated"]) == ["25%", "50%", "0%"]
    assert list(table["paper FID"].fillna(0)) == [7.92, 6.78, 0]
    # regenerating tokens moves the images away from the real ones more than reconstructing them
    tasks = json.loads((tmp_path / "results" / "editing.json").read_text())["tasks"]
    assert tasks["reconstruction"]["fid"]["mean"] < tasks["outpaint-right"]["fid"]["mean"]
    assert tasks["reconstruction"]["fid"]["ci"] == pytest.approx(0, abs=1e-12), "no randomness in reconstructions"
