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


def test_large_tensors_reuse_freed_memory_in_a_subprocess():
    """With the package imported, a second large buffer reuses the first one's pages (no page
    faults); with the setting off, every large buffer faults its pages in again."""
    import os
    import platform
    import subprocess
    import sys

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator setting is for glibc Linux")
    probe = (
        "import resource, torch, maskgit_lab\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def step(i):\n"  # a sampling step's pattern: large buffers of varying sizes, freed
        "    x = torch.empty(16_000_000).fill_(1); y = x.exp(); z = torch.empty(8_000_000 + 1000 * i).fill_(2)\n"
        "for i in range(10): step(i)\n"
        "before = faults()\n"
        "for i in range(10, 20): step(i)\n"
        "print(maskgit_lab.KEPT_FREED_MEMORY, faults() - before)\n"
    )
    out = {}
    for setting in ("1", "0"):
        env = {**os.environ, "MASKGIT_KEEP_FREED_MEMORY": setting}
        res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        kept, faults = res.stdout.split()
        out[setting] = (kept, int(faults))
    assert out["1"][0] == "True" and out["0"][0] == "False"
    pages = 10 * 160_000_000 // 4096  # 10 steps of 160 MB
    assert out["1"][1] < pages // 100 < pages // 2 < out["0"][1]
