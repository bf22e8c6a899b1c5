"""Prepare (locate and verify) the experiment's dataset and write a manifest for DVC.

    python -m maskgit_lab.data.prepare --config experiments/fmnist.yaml --out runs/fmnist/data/manifest.json

Fashion-MNIST: finds the idx files (data.root, $MASKGIT_FMNIST_DIR, the Debian package),
loads every split to check it, and records each file's SHA-256 and the split sizes.
ImageFolder: counts the images per split and class. The manifest changes exactly when the
data does, so the stages after it re-run only then.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskgit_lab.config import load_config, to_dict
from maskgit_lab.data.fmnist import FILES, FashionMNISTDataModule, find_fmnist
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.io import atomic_write_text, check_output, file_sha256


def manifest(cfg) -> dict:
    if cfg.data.name == "fmnist":
        folder = find_fmnist(cfg.data)
        dm = FashionMNISTDataModule(cfg.data)
        sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
        files = {f: file_sha256(folder / f, 64) for pair in FILES.values() for f in pair}
        return {"dataset": "fmnist", "folder": str(folder), "files": files, "sizes": sizes, "data": to_dict(cfg.data)}
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise ConfigError(f"data.root={cfg.data.root!r} is not a folder (expected train/<class>/ and val/<class>/)")
    counts = {}
    for split in ("train", "val"):
        d = root / split
        if not d.is_dir():
            raise ConfigError(f"{d} is missing: an ImageFolder tree needs train/<class>/ and val/<class>/")
        counts[split] = {c.name: sum(1 for f in c.iterdir() if f.is_file()) for c in sorted(d.iterdir()) if c.is_dir()}
    return {"dataset": "imagefolder", "folder": str(root), "counts": counts, "data": to_dict(cfg.data)}


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--out", required=True, help="manifest JSON to write")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    check_output(args.out, "--out")
    cfg = load_config(args.config, args.overrides)
    m = manifest(cfg)
    atomic_write_text(Path(args.out), json.dumps(m, indent=2, sort_keys=True) + "\n")
    print(f"{m['dataset']}: {m.get('sizes') or {k: sum(v.values()) for k, v in m['counts'].items()}} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
