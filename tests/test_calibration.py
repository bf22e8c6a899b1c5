"""Calibration of trained transformers (``maskgit_lab.calibration``): the figures on
predictions of known calibration, the fixed-ratio masks, the residual correlation on tables
of a known relation, and the command on the smoke models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from maskgit_lab import calibration as C
from maskgit_lab.checkpoints import load_models


def drawn(scale: float, m: int = 40000, k: int = 50, seed: int = 0):
    """Logits whose targets are drawn from softmax(logits): calibrated; the returned logits
    are multiplied by ``scale`` (> 1 sharper than the truth, < 1 flatter)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(m, k, generator=g)
    targets = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return scale * logits, targets


def test_calibrated_predictions_have_no_gap_and_sharpened_ones_are_over_confident():
    calibrated = C.token_stats(*drawn(1.0))
    assert abs(calibrated["gap"]) < 0.02 and calibrated["ece"] < 0.02
    sharp, flat = C.token_stats(*drawn(2.0)), C.token_stats(*drawn(0.5))
    assert sharp["gap"] > 0.3 and sharp["confidence"] > sharp["accuracy"] + 0.05
    assert flat["gap"] < -0.2 and flat["confidence"] < flat["accuracy"] - 0.05
    assert sharp["ece"] > 0.05 and flat["ece"] > 0.05
    # the same predictions' top-1 choice does not depend on the scale
    assert sharp["accuracy"] == pytest.approx(calibrated["accuracy"])


def test_uniform_predictions():
    k = 64
    s = C.token_stats(torch.zeros(100, k), torch.arange(100) % k)
    assert s["ce"] == pytest.approx(math.log(k)) and s["entropy"] == pytest.approx(math.log(k))
    assert s["confidence"] == pytest.approx(1 / k) and s["gap"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        C.token_stats(torch.zeros(3, k), torch.zeros(4, dtype=torch.long))


def test_fixed_ratio_masks_count_and_repeat():
    masks = C.fixed_ratio_masks((30, 16), [1.0, 0.5, 0.01], seed=3)
    assert masks[1.0].all()
    assert (masks[0.5].sum(1) == 8).all() and (masks[0.01].sum(1) == 1).all()
    again, other = C.fixed_ratio_masks((30, 16), [1.0, 0.5, 0.01], seed=3), C.fixed_ratio_masks((30, 16), [0.5], seed=4)
    assert torch.equal(again[0.5], masks[0.5]) and not torch.equal(other[0.5], masks[0.5])


def table(values, schedules=("a", "b", "c", "d", "e"), seeds=(0, 1, 2, 3)):
    return pd.DataFrame(values, index=list(schedules), columns=list(seeds))


def test_residual_correlation_finds_a_planted_relation_and_ignores_row_and_column_effects():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    rows, cols = rng.normal(0, 10, (5, 1)), rng.normal(0, 10, (1, 4))
    y = 3.0 * x + rows + cols + rng.normal(0, 0.1, (5, 4))
    res = C.residual_correlation(table(x), table(y))
    assert res["r"] > 0.95 and res["slope"] == pytest.approx(3.0, abs=0.2) and res["p"] < 1e-4 and res["dof"] == 11
    # row and column effects alone (x only through them) are not a relation
    alone = C.residual_correlation(table(x + rows), table(rows * 2 + cols + rng.normal(size=(5, 4))))
    assert abs(alone["r"]) < 0.8 and alone["p"] > 0.001
    with pytest.raises(ValueError):
        C.residual_correlation(table(x), table(y[:, :3], seeds=(0, 1, 2)))


def test_relate_pairs_models_with_their_trainings_cells():
    rng = np.random.default_rng(1)
    schedules, seeds = ["cosine", "linear", "square", "arccos"], [0, 1, 2]
    gap = rng.normal(0, 0.1, (4, 3))
    calib = pd.DataFrame([{"schedule": s, "train_seed": k, "ratio": 1.0, "gap": gap[i, j]}
                          for i, s in enumerate(schedules) for j, k in enumerate(seeds)])
    cells = {k: pd.Series({(s, t): 30 + 5 * i + 40 * gap[i, j] + t for i, s in enumerate(schedules) for t in (4, 8)})
             for j, k in enumerate(seeds)}
    for c in cells.values():
        c.index.names = ["schedule", "steps"]
    rel = C.relate(calib, cells)
    assert list(rel["steps"]) == [4, 8] and (rel["r"] > 0.999).all() and np.allclose(rel["slope"], 40)
    with pytest.raises(C.ConfigError, match="training seed"):
        C.relate(calib[calib["train_seed"] != 2], cells)
    with pytest.raises(C.ConfigError, match="arccos"):
        C.relate(calib[calib["schedule"] != "arccos"], cells)


def test_command_on_the_smoke_model_resumes_from_its_csv(trained, tmp_path, capsys):
    _, root = trained
    model = root / "transformer-cosine"
    out = tmp_path / "calib.csv"
    assert C.main([str(model), "--grids", "40", "--ratios", "1,0.5", "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert list(rows["ratio"]) == [1.0, 0.5] and (rows["grids"] == 40).all() and rows["train_seed"].dtype == int
    assert (rows["ce"] > 0).all() and (rows["accuracy"].between(0, 1)).all()
    assert "Calibration" in out.with_suffix(".md").read_text()

    # the masked-position path gives the same CE as a full forward pass on the same masks
    transformer, tok, cfg, meta = load_models(model / "transformer.pt")
    from maskgit_lab.eval.evaluation import held_out_codes

    codes, labels = held_out_codes(cfg, tok, meta["tokenizer_sha"], limit=40)
    mask = C.fixed_ratio_masks(tuple(codes[:40].shape), [1.0, 0.5], 0)[0.5]
    with torch.inference_mode():
        logits = transformer.eval()(codes[:40].masked_fill(mask, transformer.cfg.mask_id), labels[:40]).float()
    assert rows["ce"].iloc[1] == pytest.approx(float(F.cross_entropy(logits[mask], codes[:40][mask])), rel=1e-4)

    # a second run reuses the rows it finds (a value planted in the file survives) ...
    rows.loc[0, "ce"] = 99.0
    rows.to_csv(out, index=False)
    assert C.main([str(model / "transformer.pt"), "--grids", "40", "--ratios", "1,0.5", "--out", str(out)]) == 0
    assert pd.read_csv(out)["ce"].iloc[0] == 99.0
    # ... and evaluates again when the grids change
    assert C.main([str(model), "--grids", "30", "--ratios", "1,0.5", "--out", str(out)]) == 0
    again = pd.read_csv(out)
    assert len(again) == 2 and (again["grids"] == 30).all() and again["ce"].iloc[0] < 20


@pytest.mark.parametrize("args, message", [
    (["--ratios", "1,1.5"], "--ratios"),
    (["--ratios", "x"], "--ratios"),
    (["--grids", "0"], "--grids"),
    (["--cells", "0=a.csv"], "two or more"),
    (["--cells", "zero=a.csv", "1=b.csv"], "SEED=FILE"),
    (["--cells", "0=missing.csv", "1=missing2.csv"], "not found"),
    (["--out", "calib.json"], ".csv"),
])
def test_bad_arguments_fail_in_one_line(trained, tmp_path, capsys, args, message):
    _, root = trained
    with pytest.raises(SystemExit) as exc:
        C.main([str(root / "transformer-cosine"), *[a.replace("calib.json", str(tmp_path / "calib.json")) for a in args]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("calib*"))


def test_a_missing_model_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        C.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.csv")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "c.csv").exists()
