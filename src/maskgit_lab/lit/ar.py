"""LightningModule for the autoregressive baseline (next-token prediction in raster order)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskgit_lab.config import ExperimentConfig
from maskgit_lab.lit.mvtm import MVTMModule
from maskgit_lab.models.ar import ARTransformer

Tensor = torch.Tensor


class ARModule(MVTMModule):
    """Teacher-forced cross-entropy on every code; the rest (optimizer, learning-rate
    schedule, EMA, class dropout, label smoothing) is MVTMModule's, so the baseline differs
    from MaskGIT in the attention mask and the task only."""

    def build_model(self, cfg: ExperimentConfig) -> ARTransformer:
        return ARTransformer(cfg.transformer)

    def _ar_loss(self, model: ARTransformer, codes: Tensor, labels: Tensor, smoothing: float):
        logits = model(codes[:, :-1], labels)
        loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten(), label_smoothing=smoothing)
        acc = (logits.argmax(-1) == codes).float().mean()
        return loss, acc

    def training_step(self, batch, batch_idx: int) -> Tensor:
        codes, labels = batch
        if self.tcfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.tcfg.class_dropout
            labels = labels.masked_fill(drop, self.model.cfg.null_label)
        loss, acc = self._ar_loss(self._train_forward["fn"], codes, labels, self.tcfg.label_smoothing)
        self.log_dict({"train/loss": loss, "train/token_acc": acc}, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        codes, labels = batch
        loss, acc = self._ar_loss(self.inference_model, codes, labels, 0.0)
        self.log_dict({"val/loss": loss, "val/token_acc": acc}, prog_bar=True, batch_size=codes.shape[0])
