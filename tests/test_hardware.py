"""Precision chosen per machine: bf16 only where the hardware runs it natively."""

import pytest
import torch

from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError
from maskgit_lab.hardware import inference_dtype, native_bf16, resolve_precision

AMX = {"fpu", "avx512f", "amx_bf16", "amx_tile"}
AVX512_BF16 = {"fpu", "avx512f", "avx512_bf16"}
CASCADE_LAKE = {"fpu", "avx512f", "avx512_vnni"}  # AVX-512 and VNNI, no bf16 arithmetic


@pytest.mark.parametrize("flags, native", [(AMX, True), (AVX512_BF16, True), (CASCADE_LAKE, False), (set(), False)])
def test_auto_precision_follows_the_cpu_flags(flags, native):
    assert native_bf16("cpu", flags)[0] is native
    precision, reason = resolve_precision("auto", "cpu", flags)
    assert precision == ("bf16-mixed" if native else "32-true")
    assert reason.startswith("auto: ") and ("amx_bf16" in reason or "avx512_bf16" in reason)
    dtype, _ = inference_dtype("auto", "cpu", flags)
    assert dtype == (torch.bfloat16 if native else None)


def test_explicit_precision_wins_over_the_hardware():
    assert resolve_precision("32-true", "cpu", AMX) == ("32-true", "set in the config")
    assert resolve_precision("bf16-mixed", "cpu", CASCADE_LAKE) == ("bf16-mixed", "set in the config")
    assert inference_dtype("fp32", "cpu", AMX)[0] is None
    assert inference_dtype("bf16", "cpu", CASCADE_LAKE)[0] == torch.bfloat16


def test_the_default_config_asks_for_auto_and_rejects_unknown_precisions():
    cfg = load_config("experiments/fmnist.yaml")
    assert cfg.precision == "auto" and cfg.inference_precision == "auto"
    assert cfg.tokenizer_train.precision == "" and cfg.transformer_train.precision == ""
    with pytest.raises(ConfigError, match="valid: auto, 32-true"):
        load_config("experiments/fmnist.yaml", ["precision=bf17"])
    with pytest.raises(ConfigError, match="inference_precision"):
        load_config("experiments/fmnist.yaml", ["inference_precision=half"])
