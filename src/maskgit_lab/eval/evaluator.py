"""The Fashion-MNIST evaluator: a small CNN classifier whose penultimate features serve
FID / KID / precision / recall and whose logits serve IS and class consistency.

It is the fast default for sweeps on CPU; the standard Inception is for final rows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from maskgit_lab.checkpoints import load_state_strict
from maskgit_lab.config import EvaluatorConfig, ExperimentConfig, load_config, to_dict
from maskgit_lab.data.fmnist import FashionMNISTDataModule
from maskgit_lab.errors import ArgumentParser, ConfigError, cli_errors, fit
from maskgit_lab.io import atomic_write, file_sha256

Tensor = torch.Tensor
EVALUATOR_FORMAT = "maskgit_lab/evaluator/1"


class FMNISTClassifier(nn.Module):
    """[B, 1, 32, 32] in [-1, 1] -> (features [B, feature_dim], logits [B, num_classes])."""

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.num_classes, self.width, self.feature_dim = num_classes, width, feature_dim
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        # 32 -> 16 -> 8 -> 4 pixels; BatchNorm runs on running statistics in eval mode,
        # so features do not depend on how images are batched.
        self.body = nn.Sequential(
            *block(1, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(x)
        return f, self.head(f)


class EvaluatorModule(L.LightningModule):
    """Cross-entropy training of the evaluator with Adam; logs accuracy."""

    def __init__(self, lr: float = 2e-3, max_steps: int = 1000, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = FMNISTClassifier(width=width, feature_dim=feature_dim)

    def _step(self, batch, name: str) -> Tensor:
        x, y = batch
        _, logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({f"{name}/loss": loss, f"{name}/acc": acc}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=self.hparams.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.inference_mode()
def accuracy(net: FMNISTClassifier, dataset, batch_size: int = 500) -> tuple[float, float]:
    """(top-1, top-5) accuracy of ``net`` on a dataset of (image, label)."""
    net.eval()
    top1 = top5 = n = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        _, logits = net(x)
        top = logits.topk(5, dim=1).indices
        top1 += int((top[:, 0] == y).sum())
        top5 += int((top == y[:, None]).any(1).sum())
        n += len(y)
    return top1 / n, top5 / n


def fit_classifier(train_loader, e: EvaluatorConfig, steps: int, val_loader=None, seed: int = 0) -> FMNISTClassifier:
    """Train a fresh classifier of the evaluator's architecture for ``steps`` steps (seeded)."""
    L.seed_everything(seed, verbose=False)
    module = EvaluatorModule(lr=e.lr, max_steps=steps, width=e.width, feature_dim=e.feature_dim)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, accelerator="cpu",
                        devices=1, num_sanity_val_steps=0, enable_model_summary=False,
                        limit_val_batches=1.0 if val_loader is not None else 0, check_val_every_n_epoch=1)
    fit(trainer, module, train_loader, val_loader)
    return module.net.eval()


def classification_accuracy_score(
    images: Tensor, labels: Tensor, test_dataset, e: EvaluatorConfig, steps: int, seed: int = 0
) -> dict:
    """CAS (Ravuri & Vinyals; the paper's Table 1): train a classifier on (images, labels),
    report its top-1 / top-5 accuracy on the real test set."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(images.float(), labels.long()), batch_size=e.batch_size, shuffle=True,
                        generator=gen, drop_last=len(images) > e.batch_size)
    net = fit_classifier(loader, e, steps, seed=seed)
    top1, top5 = accuracy(net, test_dataset)
    return {"cas_top1": top1, "cas_top5": top5, "cas_train_images": len(images), "cas_steps": steps, "seed": seed}


def evaluator_path(cfg: ExperimentConfig) -> Path:
    return cfg.run_dir / "evaluator" / "evaluator.pt"


def train_evaluator(cfg: ExperimentConfig, force: bool = False) -> Path:
    """Train the evaluator on the train split (once; cached) and record its test accuracy."""
    path = evaluator_path(cfg)
    if path.is_file() and not force:
        try:
            load_evaluator(path)
            return path
        except ConfigError as exc:
            print(f"warning: {exc}; training the evaluator again", file=sys.stderr)
    if cfg.data.name != "fmnist":
        raise ConfigError(f"the fmnist evaluator needs data.name=fmnist, not {cfg.data.name!r}; use the inception extractor")
    e = cfg.evaluator
    dm = FashionMNISTDataModule(cfg.data, e.batch_size)
    start = time.time()
    net = fit_classifier(dm.train_dataloader(), e, e.max_steps, val_loader=dm.val_dataloader())
    seconds = time.time() - start
    top1, top5 = accuracy(net, dm.dataset("test"))
    payload = {
        "format": EVALUATOR_FORMAT,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "arch": {"num_classes": 10, "width": e.width, "feature_dim": e.feature_dim},
        "meta": {"test_top1": top1, "test_top5": top5, "train_seconds": round(seconds, 1), "steps": e.max_steps,
                 "data": to_dict(cfg.data)},
    }
    atomic_write(path, lambda p: torch.save(payload, p))
    print(f"evaluator: test accuracy {top1:.2%} (top-5 {top5:.2%}), {seconds:.0f} s -> {path}")
    return path


def load_evaluator(path: str | Path) -> tuple[FMNISTClassifier, dict, str]:
    """-> (classifier in eval mode, meta, content hash) from an evaluator file (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"evaluator {str(p)!r} not found; train it with `python -m maskgit_lab.eval.evaluator`")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise ConfigError(f"evaluator {p} is unreadable ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != EVALUATOR_FORMAT:
        raise ConfigError(f"wrong checkpoint: {p} is not a maskgit_lab evaluator file")
    net = FMNISTClassifier(**payload["arch"])
    load_state_strict(net, payload["state_dict"], str(p))
    return net.eval(), payload["meta"], file_sha256(p)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m maskgit_lab.eval.evaluator --config ... [--force]``: train (or reuse) the evaluator."""
    parser = ArgumentParser(prog="python -m maskgit_lab.eval.evaluator",
                                     description="Train the Fashion-MNIST evaluator classifier (cached).")
    parser.add_argument("--config", default="experiments/fmnist.yaml")
    parser.add_argument("--force", action="store_true", help="retrain even if the file exists")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    path = train_evaluator(load_config(args.config, args.overrides), force=args.force)
    _, meta, sha = load_evaluator(path)
    print(f"evaluator {path} ({sha}): test accuracy {meta['test_top1']:.2%}, top-5 {meta['test_top5']:.2%}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
