"""Content identity: which settings change a model's or a sweep's numbers, and the folder a
model lives in.

A model's folder is a readable prefix plus a short hash of the settings that made it
(``transformer-cosine-seed0-3fa9c2d1e0``): changing any of them trains a new model beside the
old one, an unchanged one is reused. A model file in any other folder of the experiment
(one named by hand, by DVC, or by an older layout) is found by the config stored in it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskgit_lab.checkpoints import load_weights
from maskgit_lab.config import ExperimentConfig, from_dict, to_dict
from maskgit_lab.errors import ConfigError
from maskgit_lab.io import content_key
from maskgit_lab.models.transformer import TransformerConfig

# Settings that decide where or how fast work runs, never what it computes.
NOT_NUMERIC = frozenset({
    "name", "runs_dir", "mlflow_uri", "accelerator", "devices", "num_nodes", "strategy", "train_workers",
    "data.num_workers", "data.download", "data.token_shards",
    "tokenizer_train.compile", "transformer_train.compile",
    # filled in from the data (the token cache), not chosen
    "transformer.codebook_size", "transformer.num_tokens", "transformer.num_classes",
})

# The settings each kind of model is made from (sections of the config, and top-level keys).
MODEL_SETTINGS = {
    "tokenizer": ("precision", "data", "tokenizer", "tokenizer_train"),
    "transformer": ("precision", "data", "tokenizer", "tokenizer_train", "transformer", "transformer_train"),
    "ar_transformer": ("precision", "data", "tokenizer", "tokenizer_train", "transformer", "transformer_train"),
}
MODEL_FILES = {"tokenizer": "tokenizer.pt", "transformer": "transformer.pt", "ar_transformer": "ar_transformer.pt"}
# what the autoregressive baseline ignores
IGNORED = {"ar_transformer": frozenset({"transformer_train.schedule"})}
KEY_LENGTH = 10


def numeric_settings(cfg: ExperimentConfig | dict, keep: tuple[str, ...] | None = None) -> dict:
    """The config as a dict without the settings in NOT_NUMERIC (only the top-level keys in
    ``keep``, when given)."""
    tree = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    out = {}
    for top, value in tree.items():
        if (keep is not None and top not in keep) or top in NOT_NUMERIC:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{top}.{k}" not in NOT_NUMERIC}
        out[top] = value
    return out


def model_key(cfg: ExperimentConfig | dict, kind: str) -> str:
    """The content key of the model of ``kind`` that ``cfg`` trains."""
    if kind not in MODEL_SETTINGS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_SETTINGS)}")
    # read the way a stored config is read: settings added since then take their defaults
    cfg = from_dict(to_dict(cfg) if isinstance(cfg, ExperimentConfig) else cfg)
    settings = numeric_settings(cfg, MODEL_SETTINGS[kind])
    for dotted in IGNORED.get(kind, ()):
        top, key = dotted.split(".")
        settings[top] = {k: v for k, v in settings[top].items() if k != key}
    settings["transformer"] = _preset_resolved(settings.get("transformer"))
    return content_key([kind, settings], KEY_LENGTH)


def _preset_resolved(section: dict | None) -> dict | None:
    """The transformer section with its preset's sizes written out, so a preset and the same
    sizes given by hand are one model."""
    if section is None:
        return None
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.items()}
    return to_dict(TransformerConfig(**fields).resolved())


def folder_name(cfg: ExperimentConfig, kind: str) -> str:
    """``tokenizer-<key>``, ``transformer-<schedule>-seed<k>-<key>``, ``ar-transformer-seed<k>-<key>``."""
    key = model_key(cfg, kind)
    t = cfg.transformer_train
    return {"tokenizer": f"tokenizer-{key}", "transformer": f"transformer-{t.schedule}-seed{t.seed}-{key}",
            "ar_transformer": f"ar-transformer-seed{t.seed}-{key}"}[kind]


_STORED_KEYS: dict[tuple[str, int, int], str | None] = {}


def stored_key(path: Path, kind: str) -> str | None:
    """The content key of the settings stored in a model file of ``kind`` (None when it is
    not such a file); cached per file version."""
    st = path.stat()
    cache = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if cache not in _STORED_KEYS:
        try:
            payload = load_weights(path)
            ok = isinstance(payload, dict) and payload.get("kind") == kind and "config" in payload
            _STORED_KEYS[cache] = model_key(payload["config"], kind) if ok else None
        except (ConfigError, OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError):
            _STORED_KEYS[cache] = None  # not a model file of this version: never a match
    return _STORED_KEYS[cache]


def model_dir(cfg: ExperimentConfig, kind: str) -> Path:
    """The folder of ``cfg``'s model of ``kind``: its content-named folder when that holds
    the model or nothing else does; else the experiment's folder whose model file stores
    the same settings."""
    root = cfg.run_dir
    named = root / folder_name(cfg, kind)
    file = MODEL_FILES[kind]
    if (named / file).is_file() or not root.is_dir():
        return named
    key = model_key(cfg, kind)
    for candidate in sorted(root.glob(f"*/{file}")):
        if stored_key(candidate, kind) == key:
            return candidate.parent
    return named


def model_file(cfg: ExperimentConfig, kind: str) -> Path:
    return model_dir(cfg, kind) / MODEL_FILES[kind]


def describe_settings(cfg: ExperimentConfig, kind: str) -> dict[str, Any]:
    """The settings behind a model's key, flattened (``section.key``), for messages."""
    out = {}
    for top, value in numeric_settings(cfg, MODEL_SETTINGS[kind]).items():
        if isinstance(value, dict):
            out.update({f"{top}.{k}": v for k, v in value.items()})
        else:
            out[top] = value
    return out
