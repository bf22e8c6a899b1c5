"""Golden values committed in tests/golden/: what names a run (the default's sweep id and model
keys, and which settings change them) and what a seed decodes to in a fresh process.

A sweep reuses finished cells by id, so a setting that changes numbers but not the id would
silently mix cells of two settings, and a decode that differs between processes would make a
reused cell differ from a re-measured one. When one of these tests fails on purpose (a new
setting, a new default, a sampler change that is meant to change samples), regenerate with
``MASKGIT_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskgit_lab.config import load_config
from maskgit_lab.identity import NOT_NUMERIC, model_key
from maskgit_lab.sweeps.common import sweep_id
from maskgit_lab.sweeps.schedule_ablation import ScheduleAblation

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
WRITE = os.environ.get("MASKGIT_WRITE_GOLDEN") == "1"
DEFAULT = "experiments/fmnist.yaml"


def fields(obj, prefix: str = "") -> dict[str, object]:
    """Every leaf setting of a config: dotted path -> value."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(fields(v, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = v
    return out


def other_value(v):
    """A value of the same kind that differs from ``v``."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v * 1.5 + 0.25
    if isinstance(v, str):
        return v + "_other"
    if isinstance(v, list | tuple):
        return type(v)([*v, *(v[:1] or [1])])
    if v is None:
        return 1
    raise TypeError(f"no other value for {v!r}")


def with_setting(cfg, path: str, value):
    """A copy of ``cfg`` with one leaf set (no validation: only what the id reads matters)."""
    out = copy.deepcopy(cfg)
    *parents, leaf = path.split(".")
    obj = out
    for p in parents:
        obj = getattr(obj, p)
    object.__setattr__(obj, leaf, value)
    return out


def ablation_id(cfg) -> str:
    return sweep_id(cfg, "schedule_ablation", {}, ScheduleAblation.grid_keys)


def identity_now() -> dict:
    cfg = load_config(DEFAULT, [])
    base = ablation_id(cfg)
    return {"config": DEFAULT,
            "sweep_id": base,
            "model_keys": {k: model_key(cfg, k) for k in ("tokenizer", "transformer", "ar_transformer")},
            # per setting: does changing it change the schedule ablation's id?
            "changes_sweep_id": {p: ablation_id(with_setting(cfg, p, other_value(v))) != base
                                 for p, v in sorted(fields(cfg).items())}}


def golden(name: str, now: dict) -> dict:
    path = GOLDEN / name
    if WRITE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=1 if name == "identity.json" else None, sort_keys=True) + "\n")
    return json.loads(path.read_text())


def test_every_setting_is_declared_as_changing_numbers_or_not():
    now = identity_now()
    want = golden("identity.json", now)
    new = sorted(set(now["changes_sweep_id"]) - set(want["changes_sweep_id"]))
    gone = sorted(set(want["changes_sweep_id"]) - set(now["changes_sweep_id"]))
    assert not new and not gone, (
        f"config settings added {new} / removed {gone}: decide for each whether it changes numbers "
        "(if not, add it to identity.NOT_NUMERIC), then regenerate tests/golden/identity.json")
    changed = {p: now["changes_sweep_id"][p] for p in now["changes_sweep_id"]
               if now["changes_sweep_id"][p] != want["changes_sweep_id"][p]}
    assert not changed, f"settings whose effect on the sweep id changed (True: now in the id): {changed}"


def test_only_declared_settings_stay_out_of_the_id():
    """What stays out of the schedule ablation's id: the settings declared as not changing
    numbers, the grid (which cells run) and the other sweep kinds' settings."""
    out = {p for p, changes in identity_now()["changes_sweep_id"].items() if not changes}
    grid = {f"sweep.{k}" for k in ScheduleAblation.grid_keys}
    others = {p for p in out if p.startswith(("sweep.tune_", "sweep.ar_"))}
    assert out - grid - others == set(NOT_NUMERIC) - {"name"}, sorted(out - grid - others)
    assert "name" not in out  # the experiment's name prefixes the id (runs of two experiments never mix)


def test_the_default_is_named_as_committed():
    now = identity_now()
    want = golden("identity.json", now)
    assert (now["sweep_id"], now["model_keys"]) == (want["sweep_id"], want["model_keys"]), (
        "the default's sweep id or model keys changed: a default or the hashing changed; say so in "
        "CHANGELOG.md and regenerate tests/golden/identity.json")


# A seed's samples, decoded in a fresh process: the smoke geometry's transformer with weights from
# torch.manual_seed(0), its output bias leaving 8 codes probable (so that fp32 rounding differences
# between CPUs cannot move a draw across a boundary of the other codes), one thread, fp32.
DECODE = r"""
import json, sys, torch
from dataclasses import replace
from maskgit_lab.config import load_config
from maskgit_lab.decoding.generate import generate_codes
from maskgit_lab.models.registry import build_transformer
torch.set_num_threads(1)
cfg = load_config("experiments/fmnist_smoke.yaml", [])
tcfg = replace(cfg.transformer, codebook_size=64, num_tokens=64, num_classes=10)
torch.manual_seed(0)
model = build_transformer(tcfg).eval()
with torch.no_grad():
    model.bias[:64] = -40.0
    model.bias[torch.arange(8) * 8] = 0.0
labels = torch.arange(4)
out = {}
for name, over in {"default": {}, "argmax": {"softmax_temperature": 0.0, "choice_temperature": 0.0},
                   "halton": {"order": "halton", "halton_shift": True},
                   "maskgit-pytorch": {"preset": "maskgit-pytorch", "guidance_weight": 2.0}}.items():
    dcfg = replace(cfg.sampling, steps=4, schedule="cosine", **over).validated(64)
    with torch.no_grad():
        codes = generate_codes(model, labels, dcfg, torch.Generator().manual_seed(7)).tokens
    out[name] = codes.tolist()
json.dump(out, sys.stdout)
"""


def decoded_in_a_fresh_process() -> dict:
    r = subprocess.run([sys.executable, "-c", DECODE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_a_seed_decodes_to_the_committed_codes_in_a_fresh_process():
    now = decoded_in_a_fresh_process()
    want = golden("decoded_codes.json", now)
    for name in want:
        assert now[name] == want[name], (
            f"{name}: the same model and seed decode to other codes than committed "
            f"({sum(a != b for r, s in zip(now[name], want[name], strict=True) for a, b in zip(r, s, strict=True))}"
            " tokens differ): a sampler change that changes samples must raise NUMERICS_REVISION "
            "and regenerate tests/golden/decoded_codes.json")
    assert len({json.dumps(v) for v in now.values()}) == len(now), "each setting decodes differently"


@pytest.mark.parametrize("setting", ["transformer_train.lr", "tokenizer.codebook_size", "sampling.choice_temperature",
                                     "data.val_size", "sweep.n"])
def test_a_setting_that_changes_numbers_changes_the_id(setting):
    cfg = load_config(DEFAULT, [])
    value = fields(cfg)[setting]
    assert ablation_id(with_setting(cfg, setting, other_value(value))) != ablation_id(cfg)
