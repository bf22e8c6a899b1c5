"""LightningModule for masked visual token modeling (MaskGIT stage 2)."""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F

from maskgit_lab.config import ExperimentConfig, stored_dict
from maskgit_lab.decoding.masking import random_mask
from maskgit_lab.lit.optim import warmup_cosine
from maskgit_lab.models.registry import build_transformer
from maskgit_lab.models.transformer import MaskGITTransformer

Tensor = torch.Tensor


class MVTMModule(L.LightningModule):
    """Mask tokens with the training schedule, predict them; optional EMA weights.

    ``cfg.transformer`` must already carry codebook_size, num_tokens and num_classes.
    Validation masks with a fixed seed per batch, so its loss (plain cross-entropy on the
    masked tokens, no label smoothing) is comparable across evaluations.
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tcfg = cfg.transformer_train
        self.save_hyperparameters({"config": stored_dict(cfg)}, logger=False)
        self.model = self.build_model(cfg)
        # torch.compile of the training forward (transformer_train.compile), kept out of the
        # module tree so state dicts keep their names
        self._train_forward = {"fn": torch.compile(self.model) if self.tcfg.compile else self.model}
        self.ema = None
        if self.tcfg.ema > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)

    def build_model(self, cfg: ExperimentConfig) -> torch.nn.Module:
        return build_transformer(cfg.transformer)

    @property
    def inference_model(self) -> MaskGITTransformer:
        """The weights to sample and evaluate with: EMA when enabled."""
        return self.ema if self.ema is not None else self.model

    def _masked_batch(self, codes: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        mask = random_mask(codes.shape[0], codes.shape[1], self.tcfg.schedule, generator, codes.device)
        return codes.masked_fill(mask, self.model.cfg.mask_id), mask

    def _logits_and_loss(self, model, inputs: Tensor, labels: Tensor, codes: Tensor, mask: Tensor,
                         smoothing: float) -> tuple[Tensor, Tensor]:
        """(loss, masked-token accuracy). With the loss on masked tokens only, the model
        computes the masked positions' logits alone."""
        if self.tcfg.loss_on == "masked":
            logits = model(inputs, labels, positions=mask)  # [M, K]
            target = codes[mask]
            loss = F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
            return loss, (logits.argmax(-1) == target).float().mean()
        logits = model(inputs, labels)
        k = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, k).float(), codes.reshape(-1), label_smoothing=smoothing)
        return loss, (logits[mask].argmax(-1) == codes[mask]).float().mean()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        codes, labels = batch
        inputs, mask = self._masked_batch(codes, None)
        if self.tcfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.tcfg.class_dropout
            labels = labels.masked_fill(drop, self.model.cfg.null_label)
        loss, acc = self._logits_and_loss(self._train_forward["fn"], inputs, labels, codes, mask,
                                          self.tcfg.label_smoothing)
        self.log_dict({"train/loss": loss, "train/masked_acc": acc}, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            with torch.no_grad():
                ema_p = list(self.ema.parameters())
                torch._foreach_lerp_(ema_p, list(self.model.parameters()), 1.0 - self.tcfg.ema)

    def validation_step(self, batch, batch_idx: int) -> None:
        codes, labels = batch
        gen = torch.Generator(device=codes.device).manual_seed(10_000 + batch_idx)
        inputs, mask = self._masked_batch(codes, gen)
        loss, acc = self._logits_and_loss(self.inference_model, inputs, labels, codes, mask, 0.0)
        self.log_dict({"val/loss": loss, "val/masked_acc": acc}, prog_bar=True, batch_size=codes.shape[0])

    def configure_optimizers(self):
        t = self.tcfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # Weight decay on matrices of linear layers only, not on norms, biases, embeddings.
            (decay if p.dim() == 2 and "emb" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=t.betas,
        )

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps, t.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
