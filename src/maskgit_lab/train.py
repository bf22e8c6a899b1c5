"""Train the two stages: ``python -m maskgit_lab.train tokenizer|transformer|all --config ...``.

tokenizer: stage 1 (the VQGAN); tokenize: encode every split once (cached); transformer:
stage 2 (MaskGIT, with the config's training schedule); ar: the autoregressive baseline;
all: tokenizer then transformer. The work is ``maskgit_lab.lit.stages``.
"""

from __future__ import annotations

import torch

from maskgit_lab import tracking
from maskgit_lab.config import load_config
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import check_output_dir
from maskgit_lab.lit.stages import tokenize, train_tokenizer, train_transformer


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.train", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["tokenizer", "tokenize", "transformer", "ar", "all"],
                        help="ar: the autoregressive baseline (same transformer, causal)")
    parser.add_argument("--config", default="experiments/fmnist.yaml", help="experiment YAML")
    parser.add_argument("--force", action="store_true", help="retrain even if a model file exists")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--model-dir", help="write the stage's model into this folder (default: a folder named by "
                                            "its settings under runs/<experiment>/); not with 'all' or 'tokenize'")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. transformer_train.max_steps=500")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.model_dir and args.stage in ("all", "tokenize"):
        raise ConfigError(f"--model-dir names one model's folder: it goes with tokenizer, transformer or ar, "
                          f"not {args.stage}")
    folder = check_output_dir(args.model_dir, "--model-dir") if args.model_dir else None
    torch.set_float32_matmul_precision("high")
    log = not args.no_mlflow
    tracking.preflight(cfg, log)
    if args.stage in ("tokenizer", "all"):
        train_tokenizer(cfg, force=args.force, log=log, folder=folder)
    if args.stage == "tokenize":
        print(tokenize(cfg, force=args.force))
    if args.stage in ("transformer", "all"):
        train_transformer(cfg, force=args.force, log=log, folder=folder)
    if args.stage == "ar":
        train_transformer(cfg, force=args.force, log=log, kind="ar_transformer", folder=folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
