"""Import released MaskGIT weights into the suite's own model files: the PyTorch
reproduction's (taming VQGAN + ``maskgit-pytorch`` transformer) or its Halton successor's
(LlamaGen VQ + ``halton-maskgit`` transformer), as the config's layouts say.

    python -m maskgit_lab.weights --config experiments/imagenet256.yaml \\
        --vqgan pretrained_maskgit/VQGAN/last.ckpt \\
        --transformer pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_256.pth \\
        --out-dir runs/imagenet256/released [--trust-checkpoint]
    python -m maskgit_lab.weights --config experiments/halton256.yaml \\
        --vqgan saved_networks/vq_ds16_c2i.pt --transformer saved_networks/ImageNet_256_base.pth

Writes ``tokenizer.pt`` (the tokenizer in the suite's module of its layout, whose parameter
names are the release's) and ``transformer.pt`` (the released network's own parameter
names), plain-tensor files that load with ``weights_only=True``; then
``sample``, ``evaluate`` and ``sweeps/schedule_ablation.py --checkpoint .../transformer.pt``
use them like trained ones. Loading is strict: every missing, unexpected or mis-shaped key
is named. The sources are opened with ``weights_only=True``; an old Lightning ``last.ckpt``
may pickle more than tensors, and is then opened only with ``--trust-checkpoint``.
Layouts: docs/paper_scale.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from maskgit_lab.checkpoints import load_state_strict, load_weights, save_model
from maskgit_lab.config import ExperimentConfig, load_config, with_data_sizes
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import check_output_dir, file_sha256
from maskgit_lab.models.registry import build_tokenizer, build_transformer
from maskgit_lab.redact import reason

VQGAN_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
OWN_BUFFERS = ("quantize.window_counts",)  # the suite's code-usage counter, not a weight
FOREIGN_BUFFERS = ("quantize.codebook_used",)  # LlamaGen's code-usage record, not a weight


def load_source(path: str | Path, trust: bool) -> Any:
    """torch.load with weights_only=True; a file that needs full unpickling is refused
    unless ``trust`` (the user vouches for its origin)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} not found")
    try:
        return load_weights(p)
    except Exception as exc:  # UnpicklingError, or a missing class of an old library
        if not trust:
            first = reason(exc, 160)
            raise ConfigError(
                f"{p} holds more than tensors ({type(exc).__name__}: {first}); unpickling it can run code "
                "from the file: pass --trust-checkpoint only if you trust where it came from") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"{p} is not a loadable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _tensors(state: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{source}: expected a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def vqgan_state(payload: Any, source: str, layout: str = "vqgan") -> dict[str, torch.Tensor]:
    """The inference weights of a tokenizer checkpoint: a taming VQGAN Lightning checkpoint
    (``state_dict``; ``loss.*`` dropped) or a LlamaGen one (``model``; its usage record dropped)."""
    key = "state_dict" if layout == "vqgan" else "model"
    if not isinstance(payload, dict) or key not in payload:
        what = "a Lightning checkpoint" if layout == "vqgan" else "a LlamaGen VQ checkpoint"
        raise ConfigError(f"{source} is not {what}: no {key!r} entry "
                          f"(found {sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__})")
    state = _tensors(payload[key], source)
    return {k: v for k, v in state.items() if not k.startswith("loss.") and k not in FOREIGN_BUFFERS}


def transformer_state(payload: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``model_state_dict`` of a MaskGIT-PyTorch or Halton-MaskGIT ``.pth`` (or a bare
    state dict)."""
    if isinstance(payload, dict) and "model_state_dict" in payload:
        payload = payload["model_state_dict"]
    state = _tensors(payload, source)
    if "tok_emb.weight" not in state:
        raise ConfigError(f"{source} is not a released MaskGIT transformer: no 'tok_emb.weight' "
                          "(expected a .pth with 'model_state_dict')")
    return state


def import_vqgan(path: str | Path, cfg: ExperimentConfig, trust: bool = False):
    """-> the tokenizer of the config's layout (eval mode) holding the released weights."""
    state = vqgan_state(load_source(path, trust), str(path), cfg.tokenizer.layout)
    model = build_tokenizer(cfg.tokenizer)
    own = model.state_dict()
    for k in OWN_BUFFERS:
        if k in own:
            state.setdefault(k, own[k])
    load_state_strict(model, state, f"VQGAN checkpoint {path} (tokenizer config of {cfg.name})")
    return model.eval()


def released_transformer_config(cfg: ExperimentConfig, state: dict[str, torch.Tensor]) -> ExperimentConfig:
    """The experiment with its transformer section set to the released layout; the class
    count (and the successor's register count) is read from the embeddings (maskgit-pytorch:
    V = K + 1 + C + 1 rows; halton-maskgit: C + 1 class rows), the sizes come from the config."""
    k = cfg.tokenizer.codebook_size
    if cfg.transformer.layout == "halton-maskgit":
        if "cls_emb.weight" not in state:
            raise ConfigError("the config's transformer.layout is halton-maskgit but the file has no 'cls_emb.weight' "
                              "(a MaskGIT-PyTorch file? use its layout, maskgit-pytorch)")
        regs = state["reg_tokens.weight"].shape[0] if "reg_tokens.weight" in state else 0
        cfg = replace(cfg, transformer=replace(cfg.transformer, registers=regs))
        return with_data_sizes(cfg, k, cfg.tokenizer.num_tokens, state["cls_emb.weight"].shape[0] - 1)
    rows = state["tok_emb.weight"].shape[0]
    if rows < k + 2:
        raise ConfigError(f"tok_emb.weight has {rows} rows, fewer than the {k} codes + mask + null class")
    tr = replace(cfg.transformer, layout="maskgit-pytorch", class_position="last")
    cfg = replace(cfg, transformer=tr)
    return with_data_sizes(cfg, k, cfg.tokenizer.num_tokens, rows - k - 2)


def import_transformer(path: str | Path, cfg: ExperimentConfig, trust: bool = False):
    """-> (the released transformer in eval mode, the experiment config it belongs to)."""
    state = transformer_state(load_source(path, trust), str(path))
    cfg = released_transformer_config(cfg, state)
    model = build_transformer(cfg.transformer)
    load_state_strict(model, state, f"transformer checkpoint {path} (transformer config of {cfg.name})")
    return model.eval(), cfg


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.weights", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/imagenet256.yaml", help="experiment the weights belong to")
    parser.add_argument("--vqgan", required=True, help="the tokenizer: a taming VQGAN Lightning checkpoint "
                        "(last.ckpt) or, with tokenizer.layout=llamagen, a LlamaGen VQ checkpoint (.pt)")
    parser.add_argument("--transformer", help="the released transformer (.pth); omit to import the tokenizer only")
    parser.add_argument("--out-dir", help="default: runs/<experiment>/released")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of sources that hold more than tensors (old Lightning files)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. transformer.dropout=0.1")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = check_output_dir(args.out_dir or cfg.run_dir / "released", "--out-dir")
    # Read and check both sources before writing anything.
    vq = import_vqgan(args.vqgan, cfg, args.trust_checkpoint)
    transformer = None
    if args.transformer:
        transformer, tcfg = import_transformer(args.transformer, cfg, args.trust_checkpoint)
    tok_file = out / "tokenizer.pt"
    save_model(tok_file, "tokenizer", vq, cfg, {"source": str(args.vqgan), "source_sha": file_sha256(args.vqgan),
                                                 "metrics": {}, "imported": True})
    print(f"tokenizer ({cfg.tokenizer.layout}): {sum(p.numel() for p in vq.parameters()) / 1e6:.1f}M parameters from "
          f"{args.vqgan} -> {tok_file}")
    if transformer is not None:
        meta = {"tokenizer_file": str(tok_file), "tokenizer_sha": file_sha256(tok_file), "imported": True,
                "source": str(args.transformer), "source_sha": file_sha256(args.transformer), "metrics": {}}
        tr_file = save_model(out / "transformer.pt", "transformer", transformer, tcfg, meta)
        print(f"transformer: {transformer.num_parameters() / 1e6:.1f}M parameters, {tcfg.transformer.num_classes} "
              f"classes, {tcfg.transformer.num_tokens} tokens from {args.transformer} -> {tr_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
