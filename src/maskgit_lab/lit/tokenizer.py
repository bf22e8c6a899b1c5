"""LightningModule that trains the VQGAN tokenizer (manual optimization for the GAN step)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from maskgit_lab.config import ExperimentConfig, stored_dict
from maskgit_lab.lit.optim import warmup_cosine
from maskgit_lab.models.losses import PatchDiscriminator, build_perceptual, hinge_d_loss
from maskgit_lab.models.vqgan import VQGAN

Tensor = torch.Tensor


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2): [B, ...] -> [B]."""
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(4.0 / mse)


def usage_stats(counts: Tensor) -> tuple[float, float]:
    """(fraction of codes used at least once, perplexity of the code distribution)."""
    total = counts.sum().clamp_min(1)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class TokenizerModule(L.LightningModule):
    """Reconstruction + codebook/commitment + optional perceptual and adaptive GAN losses."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tcfg = cfg.tokenizer_train
        self.save_hyperparameters({"config": stored_dict(cfg)}, logger=False)
        self.automatic_optimization = False
        self.model = VQGAN(cfg.tokenizer)
        pc = self.tcfg.perceptual
        self.perceptual = build_perceptual(pc.network, pc.weights)
        self.disc = (
            PatchDiscriminator(cfg.tokenizer.in_channels, self.tcfg.disc_ch, self.tcfg.disc_layers)
            if self.tcfg.disc_weight > 0 else None
        )
        # Counts training batches (not optimizer steps, which double with a discriminator);
        # a buffer so a resumed run continues from the right step.
        self.register_buffer("batches_done", torch.zeros((), dtype=torch.long))
        # torch.compile of the training forward (tokenizer_train.compile): kept out of the
        # module tree so state dicts keep their names; the first step pays the compile time.
        self._train_forward = {"fn": torch.compile(self.model) if self.tcfg.compile else self.model}
        self._revive_gen = torch.Generator().manual_seed(self.tcfg.seed)
        self._val_counts: Tensor | None = None
        self._val_psnr: list[Tensor] = []

    def _rec_loss(self, rec: Tensor, x: Tensor) -> Tensor:
        loss = F.l1_loss(rec, x) if self.tcfg.rec_loss == "l1" else F.mse_loss(rec, x)
        if self.perceptual is not None:
            loss = loss + self.tcfg.perceptual.weight * self.perceptual(rec, x)
        return loss

    def _adaptive_weight(self, rec_loss: Tensor, g_loss: Tensor) -> Tensor:
        """Balance GAN and reconstruction gradients at the decoder's last layer."""
        last = self.model.decoder.last_layer
        g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def training_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        opts = self.optimizers()
        opt_g, opt_d = opts if isinstance(opts, list) else (opts, None)
        step = int(self.batches_done)
        gan_on = self.disc is not None and step >= self.tcfg.disc_start

        rec, q = self._train_forward["fn"](x)
        rec_loss = self._rec_loss(rec, x)
        loss = rec_loss + q.loss
        if gan_on:
            g_loss = -self.disc(rec).mean()
            loss = loss + self.tcfg.disc_weight * self._adaptive_weight(rec_loss, g_loss) * g_loss
            self.log("train/g_loss", g_loss)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        # manual optimization: the schedules advance here, once per batch
        for sched in self._schedulers():
            sched.step()

        if gan_on:
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            self.log("train/d_loss", d_loss)

        self.batches_done += 1
        every = self.tcfg.revive_every
        if every and int(self.batches_done) % every == 0:
            self.log("train/revived_codes", float(self.model.quantize.revive_dead_codes(self._revive_gen)))
        used, ppl = usage_stats(q.counts)
        self.log_dict(
            {"train/rec_loss": rec_loss, "train/q_loss": q.loss, "train/perplexity": ppl,
             "train/batch_code_usage": used},
            prog_bar=True,
        )
        if int(self.batches_done) >= self.tcfg.max_steps:
            self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.cfg.tokenizer.codebook_size, device=self.device)
        self._val_psnr = []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        rec, q = self.model(x)
        self._val_counts += q.counts
        self._val_psnr.append(psnr(rec.clamp(-1, 1), x))
        self.log("val/rec_loss", self._rec_loss(rec, x), prog_bar=False)

    def on_validation_epoch_end(self) -> None:
        used, ppl = usage_stats(self._val_counts)
        self.log_dict(
            {"val/psnr": torch.cat(self._val_psnr).mean(), "val/code_usage": used, "val/perplexity": ppl},
            prog_bar=True,
        )

    def _schedulers(self) -> list:
        s = self.lr_schedulers()
        return [] if s is None else s if isinstance(s, list) else [s]

    def configure_optimizers(self):
        t = self.tcfg
        params = list(self.model.parameters())
        opts = [torch.optim.Adam(params, lr=t.lr, betas=t.betas, fused=True)]
        if self.disc is not None:
            opts.append(torch.optim.Adam(self.disc.parameters(), lr=t.lr, betas=t.betas, fused=True))
        if t.warmup_steps == 0 and t.min_lr_ratio == 1.0:  # constant rate: no scheduler
            return opts[0] if len(opts) == 1 else opts
        scheds = [torch.optim.lr_scheduler.LambdaLR(
            o, lambda step: warmup_cosine(step, t.warmup_steps, t.max_steps, t.min_lr_ratio)) for o in opts]
        return opts, scheds


@torch.inference_mode()
def evaluate_reconstruction(model: VQGAN, dataset, batch_size: int = 256) -> dict[str, float]:
    """PSNR (dB, mean over images), code usage and perplexity of ``model`` on a dataset."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(model.cfg.codebook_size, device=device)
    values = []
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        x = x.to(device)
        rec, q = model(x)
        counts += q.counts
        values.append(psnr(rec.clamp(-1, 1), x))
    used, ppl = usage_stats(counts)
    p = torch.cat(values)
    return {
        "psnr": float(p.mean()),
        "psnr_std": float(p.std()) if p.numel() > 1 else 0.0,
        "code_usage": used,
        "perplexity": ppl,
        "perplexity_max": float(model.cfg.codebook_size),
        "num_images": int(p.numel()),
    }
