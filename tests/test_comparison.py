"""The comparison sweep (Table 1) end to end on the smoke preset: the AR baseline is trained
on the same tokens, every row scored, the table and speed-ups written, MLflow rows logged,
a re-run reuses everything, and bad input is refused."""

import json
import re

import mlflow
import pandas as pd
import pytest
from helpers import SMOKE, model_path, sweep_args

from maskgit_lab.checkpoints import load_model
from maskgit_lab.sweeps import comparison, rebuild


def args(trained, tmp_path, *extra):
    return sweep_args(trained, tmp_path, "sweep.batch_size=8", *extra)


@pytest.mark.slow  # ~70 s: the whole Table 1 sweep (AR training, four decoders, CAS)
def test_comparison_table_end_to_end(trained, tmp_path, capsys):
    _, run_dir = trained
    assert comparison.main(args(trained, tmp_path, "--best", "linear:2", "sweep.ar_temperature_scan=[0.9,1.1]")) == 0
    out = tmp_path / "results"
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["Method"]) == ["MaskGIT (linear, T=2)", "MaskGIT (cosine, T=8)",
                                     "AR baseline (recompute)", "AR baseline (kv-cache)"]
    # the AR model was trained on the same tokens: 64 forward passes, one per token
    overrides = trained[0]
    ar, _, ar_meta = load_model(model_path(overrides, "ar_transformer"), "ar_transformer")
    mg, _, mg_meta = load_model(model_path(overrides), "transformer")
    assert ar_meta["tokenizer_sha"] == mg_meta["tokenizer_sha"]
    assert list(table["Steps"]) == [2, 8, 64, 64]
    assert table["Params (M)"].iloc[2] == round(ar.num_parameters() / 1e6, 2)
    assert table["paper FID"].tolist() == [6.18, 6.18, 18.65, 18.65]
    # both AR decoders draw the same samples from the same seed: same scores, different speed
    rec = json.loads((out / "comparison.json").read_text())["rows"]
    for k in ("fid", "precision", "recall", "cas_top1", "nll"):
        assert rec["ar-recompute"][k] == rec["ar-kv-cache"][k], k
    top1 = [float(v.split(" ± ")[0]) for v in table["CAS top-1"]]
    top5 = [float(v.split(" ± ")[0]) for v in table["CAS top-5"]]
    assert 0 <= min(top1) and max(top5) <= 100 and "±" in table["FID↓"].iloc[0]
    assert (table["ms/img (batch 1)"] > 0).all() and (table["img/s (large batch)"] > 0).all()
    md = (out / "comparison.md").read_text()
    assert "Speed-up" in md and "maskgit-best over ar-recompute" in md
    info = json.loads((out / "comparison.json").read_text())
    assert info["ar_temperature"] in (0.9, 1.1) and set(info["ar_temperature_scan"]) == {"0.9", "1.1"}
    assert "Tuning budgets match" in md and "AR temperature" in md
    # MLflow: one finished nested run per row; the table rebuilds from them alone
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string="tags.sweep_role = 'cell' and attributes.status = 'FINISHED'")
    assert sorted(runs["tags.cell"]) == sorted(f"row={r},seed={s}" for r in comparison.ROWS for s in (0, 1))
    # Table 3's best row samples the model trained with its schedule, the T = 8 row the config's
    from maskgit_lab.io import file_sha256
    sha = {s: file_sha256(model_path(overrides, "transformer", f"transformer_train.schedule={s}"))
           for s in ("linear", "cosine")}
    for row, s in (("maskgit-best", "linear"), ("maskgit-T8", "cosine")):
        mine = runs[runs["params.row"] == row]
        assert set(mine["params.train_schedule"]) == {s} and set(mine["tags.checkpoint_sha"]) == {sha[s]}, row
    assert "Each MaskGIT row samples the transformer trained with its own schedule" in md
    before = (out / "comparison.csv").read_text()
    assert rebuild.main(["--config", SMOKE, "--out-dir", str(tmp_path / "rebuilt"), *args(trained, tmp_path)[6:]]) == 0
    assert (tmp_path / "rebuilt" / "table1" / "comparison.csv").read_text() == before
    # a re-run computes nothing new
    capsys.readouterr()
    assert comparison.main(args(trained, tmp_path, "--best", "linear:2", "sweep.ar_temperature_scan=[0.9,1.1]")) == 0
    out = capsys.readouterr().out
    assert "(selection seed)" not in out and not re.search(r"^\[\d+/\d+", out, re.M), out


@pytest.mark.parametrize("extra,message", [
    (["--best", "cosine"], "SCHEDULE:T"),
    (["--best", "zigzag:4"], "unknown mask schedule"),
    (["sweep.ar_top_p=0"], "top_p"),
    ([], "run `python sweeps/schedule_ablation.py` first"),
])
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        comparison.main(args(trained, tmp_path, *extra))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "optuna.db").exists()
