"""What this machine can run: device names, a description of the machine for timings."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from maskgit_lab.errors import ConfigError


def checked_device(name: str) -> str:
    """A ``--device`` value this machine can run on, else a ConfigError naming the valid ones."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:<index>") from None
    if device.type == "cpu":
        return name
    if device.type != "cuda":
        raise ConfigError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:<index>")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {name} requested but no CUDA device is available; use --device cpu")
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s); valid: cpu, cuda, "
                          f"cuda:0..{count - 1}")
    return name


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers from /proc/cpuinfo, e.g.
    ``AMD EPYC (family 26, model 2)`` (else what platform knows)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine_model(device: str) -> str:
    """The processor that runs ``device``'s work: the GPU's name, else the CPU's model."""
    return torch.cuda.get_device_name() if torch.device(device).type == "cuda" else cpu_model()


def machine_name(device: str) -> str:
    """A short description of the machine the timings come from."""
    if torch.device(device).type == "cuda":
        return machine_model(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"


# CPU flags of native bf16 matrix arithmetic (AMX tiles, AVX-512 BF16 dot products). Without
# them PyTorch emulates bf16 and it runs slower than fp32 (docs/speed.md).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read).
    ``MASKGIT_CPU_FLAGS`` (space-separated flags) stands in for them, to measure on this
    machine as on another CPU (with ONEDNN_MAX_CPU_ISA capping the kernels the same way)."""
    if "MASKGIT_CPU_FLAGS" in os.environ:
        return set(os.environ["MASKGIT_CPU_FLAGS"].split())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str | torch.device, flags: set[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` runs bf16 matrix arithmetic in hardware, and why (a short reason)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"CUDA device {torch.cuda.get_device_name(dev)} supports bf16"
        return False, "CUDA device without bf16"
    flags = cpu_flags() if flags is None else flags
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if found:
        return True, f"CPU has {', '.join(found)}"
    return False, f"CPU lacks {' and '.join(BF16_CPU_FLAGS)} (bf16 would be emulated, slower than fp32)"


def training_device(accelerator: str) -> str:
    """The device type Lightning will train on for a config's ``accelerator``."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_precision(requested: str, device: str | torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """Lightning precision for a stage -> (precision, reason). ``auto``: bf16-mixed where the
    hardware runs bf16 natively, else 32-true; any other value is used as given."""
    if requested != "auto":
        return requested, "set in the config"
    native, why = native_bf16(device, flags)
    return ("bf16-mixed" if native else "32-true"), f"auto: {why}"


def inference_dtype(requested: str, device: str | torch.device,
                    flags: set[str] | None = None) -> tuple[torch.dtype | None, str]:
    """Autocast dtype for sampling (transformer and tokenizer decoder) -> (dtype or None for
    fp32, reason). ``auto``: bf16 where the hardware runs it natively."""
    if requested == "fp32":
        return None, "set in the config"
    if requested == "bf16":
        return torch.bfloat16, "set in the config"
    native, why = native_bf16(device, flags)
    return (torch.bfloat16 if native else None), f"auto: {why}"


def dtype_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp16" if dtype == torch.float16 else "fp32"


def autocast(device: str | torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on the device, or nothing for fp32 (``dtype`` None or float32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
