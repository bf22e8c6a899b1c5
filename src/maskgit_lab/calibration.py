"""How sure trained transformers are against how right: masked-token cross-entropy,
predictive entropy, top-1 accuracy and confidence at fixed mask ratios on held-out token
grids, and (with ``--cells``) whether a training's calibration goes with its Table 3 FID.

    python -m maskgit_lab.calibration runs/fmnist/transformer-cosine [runs/fmnist/transformer-*] \\
        [--ratios 1,0.9,0.75,0.5,0.25] [--grids 2000] [--seed 0] [--out results/fmnist/calibration.csv] \\
        [--cells 0=results/fmnist/schedule_ablation_cells.csv 1=.../seed1/schedule_ablation_cells.csv ...]

Each argument is a transformer file or a folder holding ``transformer.pt``. Every model sees
the same grids with the same masked positions (drawn from ``--seed`` for each ratio), so two
models' rows are paired. For a calibrated model the expected cross-entropy equals the expected
entropy of its own predictions; ``gap = CE - entropy`` is positive when the model is
over-confident (its distribution narrower than its errors warrant) and negative when it is
under-confident. ``ece`` is the top-1 expected calibration error over 15 equal-width bins.

With ``--cells SEED=FILE`` (the per-cell file of a ``train``-mode schedule ablation whose
models were trained with ``transformer_train.seed=SEED``) the report relates each model's
gap to its training's FID. Both are double-centred over the schedule x training table (the
schedule's mean over trainings and the training's mean over schedules removed), which leaves
what one training did to one schedule: the part of FID that Table 3's seeds do not see. The
Pearson correlation of the two residuals is tested with (S - 1)(k - 1) - 1 degrees of freedom.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm.auto import tqdm

from maskgit_lab.checkpoints import load_models, transformer_file
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors
from maskgit_lab.eval.evaluation import held_out_codes
from maskgit_lab.io import atomic_write_text, file_sha256, publish_report
from maskgit_lab.sweeps.trainings import double_centre, read_cells

METRICS = ("ce", "entropy", "gap", "accuracy", "confidence", "ece")
ECE_BINS = 15


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Calibration figures of predictions ``logits [M, K]`` for the true codes ``targets [M]``."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1] or len(targets) == 0:
        raise ValueError(f"want logits [M, K] and targets [M] with M > 0, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    logp = logits.float().log_softmax(-1)
    ce = F.nll_loss(logp, targets, reduction="none")
    entropy = -(logp.exp() * logp).sum(-1)
    conf, pred = logp.exp().max(-1)
    right = (pred == targets).float()
    # ECE: per confidence bin, |accuracy - mean confidence| weighted by the bin's share
    bins = (conf * ECE_BINS).long().clamp(max=ECE_BINS - 1)
    count = torch.bincount(bins, minlength=ECE_BINS).float()
    gap_sum = torch.bincount(bins, weights=right - conf, minlength=ECE_BINS)
    ece = float(gap_sum.abs().sum() / count.sum())
    return {"ce": float(ce.mean()), "entropy": float(entropy.mean()), "gap": float((ce - entropy).mean()),
            "accuracy": float(right.mean()), "confidence": float(conf.mean()), "ece": ece}


def fixed_ratio_masks(shape: tuple[int, int], ratios: list[float], seed: int) -> dict[float, torch.Tensor]:
    """For each ratio r, a bool mask [M, N] with round(r * N) (at least one) positions set in
    every row, drawn uniformly from ``seed``: the same for every model evaluated."""
    m, n = shape
    out = {}
    for i, r in enumerate(ratios):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        k = max(1, round(r * n))
        idx = torch.rand((m, n), generator=g).argsort(1)[:, :k]
        out[r] = torch.zeros((m, n), dtype=torch.bool).scatter_(1, idx, True)
    return out


@torch.inference_mode()
def model_stats(transformer, codes: torch.Tensor, labels: torch.Tensor, masks: dict[float, torch.Tensor],
                batch: int = 250) -> list[dict]:
    """One row per ratio: ``token_stats`` of the model's predictions at the masked positions."""
    transformer.eval()
    mask_id = transformer.cfg.mask_id
    rows = []
    for r, mask in masks.items():
        logits, targets = [], []
        for s in range(0, len(codes), batch):
            c, y, mk = codes[s : s + batch], labels[s : s + batch], mask[s : s + batch]
            logits.append(transformer(c.masked_fill(mk, mask_id), y, positions=mk).float())
            targets.append(c[mk])
        rows.append({"ratio": r, **token_stats(torch.cat(logits), torch.cat(targets))})
    return rows


def calibrate(paths: list[str], ratios: list[float], grids: int, seed: int, batch: int = 250,
              out: Path | None = None) -> pd.DataFrame:
    """Rows (model, schedule, train_seed, ..., ratio, *METRICS) for every model. With ``out``
    (a csv) the rows are written after each model, and a model whose rows are already there
    (same file content, grids, mask seed and ratios) is not evaluated again: an interrupted
    run resumes, and a later one with more models pays for the new ones only."""
    files = [transformer_file(p) for p in paths]
    done = pd.read_csv(out, dtype={"model_sha": str, "tokenizer_sha": str}) if out is not None and out.is_file() else pd.DataFrame(columns=["model_sha"])
    data: dict[str, tuple] = {}  # per tokenizer: its test codes and the masks
    frames = []
    for f in tqdm(files, desc="calibration", unit="model", dynamic_ncols=True):
        sha_model = file_sha256(f)
        old = done[done["model_sha"] == sha_model]
        if len(old):
            old = old[(old["grids"] == grids) & (old["mask_seed"] == seed) & old["ratio"].isin(ratios)]
        if len(old) == len(ratios):
            frames.append(old.assign(model=str(f.parent)))
            continue
        transformer, tok, cfg, meta = load_models(f)
        sha = meta["tokenizer_sha"]
        if sha not in data:
            codes, labels = held_out_codes(cfg, tok, sha, limit=grids)
            codes, labels = codes[:grids], labels[:grids]
            if len(codes) < grids:
                raise ConfigError(f"--grids {grids}: the test split has only {len(codes)} grids")
            data[sha] = (codes, labels, fixed_ratio_masks(tuple(codes.shape), ratios, seed))
        codes, labels, masks = data[sha]
        ident = {"model": str(f.parent), "schedule": cfg.transformer_train.schedule,
                 "train_seed": cfg.transformer_train.seed, "tokenizer_sha": sha[:12], "model_sha": sha_model,
                 "grids": grids, "mask_seed": seed}
        frames.append(pd.DataFrame([{**ident, **r} for r in model_stats(transformer, codes, labels, masks, batch)]))
        if out is not None:
            keep = done[~done["model_sha"].isin(pd.concat(frames)["model_sha"])]
            atomic_write_text(out, _tidy([keep, *frames]).to_csv(index=False))
    return _tidy(frames)


def _tidy(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The non-empty frames as one, the integer columns kept integers."""
    df = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return df.astype({c: int for c in ("train_seed", "grids", "mask_seed") if c in df})


def residual_correlation(x: pd.DataFrame, y: pd.DataFrame) -> dict[str, float]:
    """Pearson correlation of the interaction residuals of two schedule x training tables
    (same index and columns, no gaps), its slope (y on x) and two-sided p with
    (S - 1)(k - 1) - 1 degrees of freedom."""
    if x.shape != y.shape or (x.index != y.index).any() or (x.columns != y.columns).any():
        raise ValueError("the two tables must have the same schedules and trainings")
    if x.isna().any().any() or y.isna().any().any():
        raise ValueError("a schedule x training table has gaps")
    s, k = x.shape
    dof = (s - 1) * (k - 1) - 1
    if dof < 1:
        raise ConfigError(f"need at least 2 schedules and 2 trainings with room to spare, got {s} x {k}")
    rx, ry = double_centre(x.to_numpy(dtype=float)).ravel(), double_centre(y.to_numpy(dtype=float)).ravel()
    r = float(np.sum(rx * ry) / math.sqrt(np.sum(rx**2) * np.sum(ry**2)))
    t = r * math.sqrt(dof / max(1e-12, 1 - r**2))
    return {"r": r, "slope": float(np.sum(rx * ry) / np.sum(rx**2)), "p": float(2 * stats.t.sf(abs(t), dof)),
            "dof": dof, "residual_sd_fid": float(math.sqrt(np.sum(ry**2) / (dof + 1)))}


def relate(calib: pd.DataFrame, cells: dict[int, pd.Series]) -> pd.DataFrame:
    """Per (ratio, steps): ``residual_correlation`` of the models' gap and their trainings' FID.
    ``cells`` maps a training seed to its cells' mean FID indexed by (schedule, steps)."""
    fid = pd.concat(cells, axis=1)  # index (schedule, steps), columns the training seeds
    got = set(calib["train_seed"])
    if missing := sorted(set(cells) - got):
        raise ConfigError(f"--cells names training seed(s) {missing} but no model of that seed was calibrated "
                          f"(calibrated seeds: {sorted(got)})")
    if calib.groupby(["schedule", "train_seed", "ratio"]).size().max() > 1:
        raise ConfigError("two calibrated models share a schedule and training seed; give one training per seed")
    out = []
    for ratio in sorted(set(calib["ratio"]), reverse=True):
        gap = calib[calib["ratio"] == ratio].pivot(index="schedule", columns="train_seed", values="gap")
        for steps in sorted(set(fid.index.get_level_values("steps"))):
            f = fid.xs(steps, level="steps")
            if lacking := sorted(set(f.index) - set(gap.index)):
                raise ConfigError(f"no calibrated model for schedule(s) {lacking} of the cells files")
            g = gap.loc[f.index, list(cells)]
            if g.isna().any().any():
                raise ConfigError("a schedule of the cells files lacks a calibrated model of some training seed")
            out.append({"ratio": ratio, "steps": steps, **residual_correlation(g, f[list(cells)])})
    return pd.DataFrame(out)


def report(calib: pd.DataFrame, rel: pd.DataFrame | None) -> str:
    lines = ["# Calibration of the trained transformers", "",
             f"{calib['model'].nunique()} models, {int(calib['grids'].iloc[0])} held-out grids, the same masks for every "
             "model. gap = CE - entropy (nats; > 0: over-confident). Written by `python -m maskgit_lab.calibration`.", ""]
    wide = calib.pivot_table(index=["schedule", "train_seed"], columns="ratio", values=["ce", "gap"])
    ratios = sorted(set(calib["ratio"]), reverse=True)
    lines.append("| schedule | training seed | " + " | ".join(f"CE / gap r={r:g}" for r in ratios) + " |")
    lines.append("|---|---|" + "---|" * len(ratios))
    for (schedule, seed), row in wide.iterrows():
        lines.append(f"| {schedule} | {seed} | " + " | ".join(f"{row[('ce', r)]:.3f} / {row[('gap', r)]:+.3f}" for r in ratios) + " |")
    if rel is not None:
        lines += ["", "## A training's calibration against its FID", "",
                  "Interaction residuals (schedule x training, double-centred) of the gap and of the cell's mean FID; "
                  "Pearson r, the slope in FID per nat of gap, two-sided p.", "",
                  "| mask ratio | T | r | slope (FID/nat) | p | dof | residual sd of FID |", "|---|---|---|---|---|---|---|"]
        for _, x in rel.iterrows():
            lines.append(f"| {x['ratio']:g} | {int(x['steps'])} | {x['r']:+.2f} | {x['slope']:+.1f} | {x['p']:.3g} | "
                         f"{int(x['dof'])} | {x['residual_sd_fid']:.2f} |")
    return "\n".join(lines) + "\n"


def _ratios(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--ratios {text!r}: want comma-separated numbers in (0, 1], e.g. 1,0.75,0.5") from None
    if not vals or any(not 0 < v <= 1 for v in vals) or len(set(vals)) != len(vals):
        raise ConfigError(f"--ratios {text!r}: want distinct mask ratios in (0, 1], e.g. 1,0.75,0.5")
    return vals


def _cells_arg(items: list[str]) -> dict[int, str]:
    out = {}
    for it in items:
        seed, sep, path = it.partition("=")
        if not sep or not seed.strip().lstrip("-").isdigit() or not path:
            raise ConfigError(f"--cells {it!r}: want SEED=FILE, the training seed and its schedule_ablation_cells.csv")
        if int(seed) in out:
            raise ConfigError(f"--cells gives training seed {seed} twice")
        out[int(seed)] = path
    return out


@cli_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m maskgit_lab.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="transformer files or the folders that hold them")
    parser.add_argument("--ratios", default="1,0.9,0.75,0.5,0.25", help="mask ratios, comma-separated, in (0, 1]")
    parser.add_argument("--grids", type=int, default=2000, help="held-out token grids (the first ones of the test split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masked positions")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--cells", nargs="+", default=[], metavar="SEED=FILE",
                        help="relate the gap to FID: each training seed's schedule_ablation_cells.csv (two or more)")
    parser.add_argument("--out", help="the rows (a .csv, written after each model; models already in it are "
                        "reused) and the report beside it (.md)")
    args = parser.parse_args(argv)
    ratios = _ratios(args.ratios)
    if args.grids < 1 or args.batch < 1:
        raise ConfigError(f"--grids and --batch must be positive, got {args.grids} and {args.batch}")
    cells = _cells_arg(args.cells)
    if len(cells) == 1:
        raise ConfigError("--cells needs two or more trainings to separate a training's effect from the schedule's")
    cells = {s: read_cells(p)["mean"] for s, p in cells.items()}  # checked before the models run
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".csv":
        raise ConfigError(f"--out {args.out!r}: want a .csv path (the report goes beside it as .md)")
    calib = calibrate(args.models, ratios, args.grids, args.seed, args.batch, out)
    rel = relate(calib, cells) if cells else None
    text = report(calib, rel)
    publish_report(text, None if out is None else out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
