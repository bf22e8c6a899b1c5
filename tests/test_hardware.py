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


@pytest.mark.slow
def test_large_tensors_reuse_freed_memory_in_a_configured_process_and_import_changes_nothing():
    """In a process a command configured, a second large buffer reuses the first one's pages
    (no page faults); with the setting off, or with the package only imported, every large
    buffer faults its pages in again, and importing leaves the environment as it was."""
    import os
    import platform
    import subprocess
    import sys

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator setting is for glibc Linux")
    probe = (
        "import os, resource, sys, torch, lightning.pytorch, mlflow, optuna, pandas, matplotlib.pyplot, scipy.stats\n"
        "import torch_fidelity, torchvision\n"
        "env = dict(os.environ)\n"
        "import maskgit_lab.process, maskgit_lab.sweeps.schedule_ablation, maskgit_lab.train\n"
        "untouched = dict(os.environ) == env\n"
        "kept = maskgit_lab.process.configure() if sys.argv[1] == 'configure' else False\n"
        "def faults():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def step(i):\n"  # a sampling step's pattern: large buffers of varying sizes, freed
        "    x = torch.empty(16_000_000).fill_(1); y = x.exp(); z = torch.empty(8_000_000 + 1000 * i).fill_(2)\n"
        "for i in range(10): step(i)\n"
        "before = faults()\n"
        "for i in range(10, 20): step(i)\n"
        "print(untouched, kept, os.environ.get('MLFLOW_DISABLE_TELEMETRY'), faults() - before)\n"
    )
    out = {}
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS")}
    for case, setting in (("configure", "1"), ("configure", "0"), ("import", "1")):
        res = subprocess.run([sys.executable, "-c", probe, case], env={**clean, "MASKGIT_KEEP_FREED_MEMORY": setting},
                             capture_output=True, text=True, check=True)
        untouched, kept, telemetry, faults = res.stdout.split()
        out[case, setting] = (untouched, kept, telemetry, int(faults))
    assert [v[0] for v in out.values()] == ["True"] * 3, "importing the package (after the libraries it uses) " \
        "changes no environment variable"
    assert out["configure", "1"][1:3] == ("True", "true") and out["configure", "0"][1:3] == ("False", "true")
    assert out["import", "1"][1:3] == ("False", "None")
    pages = 10 * 160_000_000 // 4096  # 10 steps of 160 MB
    assert out["configure", "1"][3] < pages // 100 < pages // 2 < min(out["configure", "0"][3], out["import", "1"][3])
