"""The project's own model files: weights plus the resolved config that built them.

A model file is a plain dict of tensors, strings and numbers, so it always loads with
``torch.load(..., weights_only=True)``:
    {"format": FORMAT, "kind": "tokenizer" | "transformer" | "ar_transformer", "config": {...},
     "state_dict": {...}, "meta": {...}}
Loading is strict: a wrong kind, a foreign file or mismatched keys is a ConfigError.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskgit_lab.config import ExperimentConfig, from_dict, stored_dict
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import atomic_write, file_sha256, git_commit
from maskgit_lab.models.registry import MODEL_KINDS

FORMAT = "maskgit_lab/1"
KINDS = tuple(MODEL_KINDS)


def save_model(
    path: str | Path, kind: str, model: nn.Module, cfg: ExperimentConfig, meta: dict[str, Any] | None = None
) -> Path:
    """Write a model file atomically; ``meta`` gets the git commit and a timestamp added."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    payload = {
        "format": FORMAT,
        "kind": kind,
        "config": stored_dict(cfg),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": {"git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})},
    }
    return atomic_write(path, lambda p: torch.save(payload, p))


def load_weights(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` without torch's warning about the pickle protocol of a
    file written elsewhere: a refused file is reported by the caller in one line, not three."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load and check a model file of the given kind (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} not found")
    try:
        payload = load_weights(p)
    except Exception as exc:
        raise ConfigError(f"{p} is not a loadable maskgit_lab checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{p} is not a maskgit_lab model file (expected format {FORMAT!r})")
    if payload.get("kind") != kind:
        raise ConfigError(f"wrong checkpoint: {p} holds a {payload.get('kind')!r} model, expected a {kind!r} model")
    return payload


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(
            "shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:5])
        )
    if problems:
        raise ConfigError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def load_model(path: str | Path, kind: str):
    """-> (network in eval mode, ExperimentConfig, meta) from a model file of ``kind``.

    The network is rebuilt from the config stored in the file (for transformers it holds the
    filled-in sizes) and loaded strictly."""
    payload = load_checkpoint(path, kind)
    cfg = from_dict(payload["config"])
    model = MODEL_KINDS[kind](cfg)
    load_state_strict(model, payload["state_dict"], str(path))
    return model.eval(), cfg, payload["meta"]


def transformer_file(path: str | Path) -> Path:
    """``path`` itself or the ``transformer.pt`` in it; a one-line error when there is none."""
    p = Path(path)
    p = p / "transformer.pt" if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"transformer {str(path)!r} not found (a transformer.pt or the folder holding one)")
    return p


def load_models(checkpoint: str | Path, tokenizer: str | Path | None = None, device: str = "cpu"):
    """-> (transformer, tokenizer, config, transformer meta), checking they belong together."""
    transformer, cfg, meta = load_model(checkpoint, "transformer")
    # without --tokenizer: the path recorded at training (relative to that run's working
    # directory), else a tokenizer beside the checkpoint's folder in its experiment's folder
    beside = sorted(Path(checkpoint).resolve().parent.parent.glob("tokenizer*/tokenizer.pt"))
    candidates = [Path(tokenizer)] if tokenizer is not None else list(dict.fromkeys(
        (Path(meta["tokenizer_file"]), *beside)))
    found = {p: tokenizer_identity(p) for p in candidates if p.is_file()}
    if not found:
        raise ConfigError(f"tokenizer {str(candidates[0])!r} of {checkpoint} not found; pass --tokenizer PATH")
    matching = [p for p, sha in found.items() if sha == meta["tokenizer_sha"]]
    if not matching:
        tok_path, sha = next(iter(found.items()))
        raise ConfigError(
            f"wrong checkpoint: {tok_path} is not the tokenizer {checkpoint} was trained on "
            f"(content hash {sha} != {meta['tokenizer_sha']})"
        )
    tok_path = matching[0]
    tok, _, _ = load_model(tok_path, "tokenizer")
    return transformer.to(device), tok.to(device), cfg, meta


def tokenizer_identity(path: str | Path) -> str:
    """Content key of a tokenizer file: what token caches and transformers are tied to."""
    return file_sha256(path)
