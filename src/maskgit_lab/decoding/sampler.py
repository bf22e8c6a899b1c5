"""MaskGIT parallel (iterative, confidence-based) decoding as a pure function.

The decoder knows nothing about the model or the trainer: it takes a
``logits_fn(tokens [B, N], labels [B]) -> logits [B, N, K]`` callable (or one that also
takes ``positions`` [B, N] bool and returns only those positions' logits [M, K], as the
suite's transformers do: the decoder then asks for the unknown positions only), the token grid
with ``mask_id`` at unknown positions, and an explicit ``torch.Generator``. All
randomness (categorical sampling, Gumbel noise) is drawn from that generator.

Official algorithm (MaskGIT, google-research/maskgit), for step s = 0..T-1:
  1. logits = logits_fn(tokens, labels), optionally classifier-free guided;
  2. sample a token at every unknown position (known positions keep theirs);
  3. ratio = (s+1)/T; n_mask = floor(U0 * gamma(ratio)) clipped to [1, unknown - 1];
  4. confidence = log p(sampled) + tau * anneal(s) * Gumbel noise, +inf where known
     (p: the distribution the token was drawn from; see DecodeConfig.confidence);
  5. re-mask the n_mask least confident positions. The last step fills everything.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from maskgit_lab.decoding.orders import MASK_CONVENTIONS, ORDERS, fixed_order, masked_counts
from maskgit_lab.decoding.schedules import canonical_name
from maskgit_lab.errors import ConfigError

Tensor = torch.Tensor
LogitsFn = Callable[[Tensor, Tensor | None], Tensor]

# Revision of the sampling numerics: raised whenever a code change gives other samples for
# the same model, settings and seed (sweeps key their cells on it, so cells measured by
# older numerics are not reused). 2: explicit reduced-precision attention on the CPU, the
# code head on the unknown positions only, the two-level inverse CDF.
NUMERICS_REVISION = 2

ConfidenceSource = Literal["tempered", "model"]
GumbelAnneal = Literal["official", "reproduction"]

GUMBEL_ANNEALS = ("official", "reproduction")
GUIDANCE_RAMPS = ("constant", "linear", "cosine", "interval")
CONFIDENCE_SOURCES = ("tempered", "model")
TEMPERATURE_SCHEDULES = ("constant", "linear")
TEMPERATURE_CONVENTIONS = ("divide", "multiply")

# Each upstream sampler's conventions (not its values: T, w, tau and the temperatures stay the
# config's). docs/decoding.md maps every upstream parameter to these.
PRESETS: dict[str, dict[str, object]] = {
    # google-research/maskgit: cumulative counts, noise annealed by 1 - (s+1)/T, log p of the
    # model's own distribution, no guidance
    "official": {"order": "confidence", "mask_convention": "official", "gumbel_anneal": "official",
                 "confidence": "model", "temperature_convention": "divide", "temperature_schedule": "constant",
                 "guidance_ramp": "constant", "redraw_revealed": False},
    # valeoai/Maskgit-pytorch v1.0: per-step increments, noise annealed by 1 - s/(T-1), a
    # temperature that multiplies the logits, guidance ramped by s/(T-1)
    "maskgit-pytorch": {"order": "confidence", "mask_convention": "increments", "gumbel_anneal": "reproduction",
                        "confidence": "tempered", "temperature_convention": "multiply",
                        "temperature_schedule": "constant", "guidance_ramp": "linear", "redraw_revealed": False},
    # valeoai/Halton-MaskGIT: the Halton order, counts revealed as max(s+1, int((1 - gamma) N)),
    # a multiplying temperature ramped from min to max, constant guidance, new positions only
    "halton-maskgit": {"order": "halton", "mask_convention": "revealed", "temperature_convention": "multiply",
                       "temperature_schedule": "linear", "guidance_ramp": "constant", "redraw_revealed": False},
}


@dataclass(frozen=True)
class DecodeConfig:
    """Settings of one decode.

    steps: T, the number of parallel decoding steps (1 <= T <= N).
    schedule: mask schedule name (see ``maskgit_lab.schedules``): how many tokens stay masked.
    order: which positions are revealed: ``confidence`` (the most confident drawn tokens,
        with Gumbel noise), ``random`` (a random permutation per sample) or ``halton`` (the
        2-D Halton sequence over the grid; ``halton_shift`` rolls it by a random offset per
        sample). The fixed orders use no confidence and no choice noise.
    choice_temperature: tau, scale of the Gumbel noise added to the confidence
        (official default 4.5; 0 gives deterministic most-confident-first).
    softmax_temperature: the token temperature t (``temperature_schedule`` constant).
    temperature_schedule: ``constant`` (t) or ``linear``: t_s = linspace(temperature_min,
        temperature_max, T)[s] ** temperature_power; either is halved for the first
        ``temperature_warmup`` steps.
    temperature_convention: ``divide`` (softmax(logits / t), t = 0 the argmax) or ``multiply``
        (softmax(logits * t), the reproduction's and its successor's "temperature").
    top_k: draw among the k most probable codes only (0: all).
    mask_convention: how many tokens stay masked after each step (``orders.masked_counts``):
        "official", "increments" (the reproduction) or "revealed" (the successor).
    gumbel_anneal: "official" scales tau by 1 - (s+1)/T; "reproduction" by 1 - s/(T-1).
    guidance_weight: w of classifier-free guidance, logits (1 + w_s) c - w_s u (0 disables the
        unconditional pass; the form s = 1 + w of other codebases is the same guidance).
    guidance_ramp: w_s at step s (``guidance_at``): "constant" w; "linear" w s/(T-1); "cosine"
        w (1 - cos(pi s/(T-1)))/2; "interval" w while s/(T-1) lies in ``guidance_interval``, else 0.
    confidence: the log-probability the confidence starts from: "tempered" is log p of the
        sampled token under the distribution it was drawn from (the reproduction's choice);
        "model" is log p under the model's own softmax(logits). Equal at t = 1; with t = 0
        (argmax) both use the model's distribution.
    redraw_revealed: a fixed order draws every position revealed so far again at each step
        (an earlier version of the successor); by default revealed tokens are kept.
    preset: "", or an upstream whose conventions are used (``PRESETS``).
    """

    steps: int = 8
    schedule: str = "cosine"
    order: str = "confidence"
    halton_shift: bool = False
    choice_temperature: float = 4.5
    softmax_temperature: float = 1.0
    temperature_schedule: str = "constant"
    temperature_min: float = 1.0
    temperature_max: float = 1.0
    temperature_power: float = 1.0
    temperature_warmup: int = 0
    temperature_convention: str = "divide"
    top_k: int = 0
    mask_convention: str = "official"
    gumbel_anneal: GumbelAnneal = "official"
    guidance_weight: float = 0.0
    guidance_ramp: str = "linear"
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    confidence: ConfidenceSource = "tempered"
    redraw_revealed: bool = False
    preset: str = ""

    def validated(self, num_tokens: int, codebook_size: int | None = None) -> DecodeConfig:
        """Return a copy with the canonical schedule name and the preset's conventions, or
        raise ConfigError naming the bad value and the valid choices."""
        if not isinstance(self.steps, int) or isinstance(self.steps, bool):
            raise ConfigError(f"steps T must be an integer, got {self.steps!r}")
        if not 1 <= self.steps <= num_tokens:
            raise ConfigError(
                f"steps T={self.steps} is impossible: T must be between 1 and N={num_tokens} "
                "(the number of tokens in the grid)"
            )
        values = dict(self.__dict__)
        if self.preset:
            if self.preset not in PRESETS:
                raise ConfigError(f"unknown sampling preset {self.preset!r}; valid: {', '.join(PRESETS)}")
            defaults = DecodeConfig()
            for k, v in PRESETS[self.preset].items():
                if values[k] not in (v, getattr(defaults, k)):
                    raise ConfigError(f"sampling preset {self.preset} sets {k}={v!r}; {k}={values[k]!r} contradicts "
                                      "it (leave it out, or drop the preset)")
                values[k] = v
        for name in ("choice_temperature", "softmax_temperature", "guidance_weight", "temperature_min",
                     "temperature_max", "temperature_power"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, value, valid in (
            ("order", values["order"], ORDERS),
            ("mask_convention", values["mask_convention"], MASK_CONVENTIONS),
            ("gumbel_anneal", values["gumbel_anneal"], GUMBEL_ANNEALS),
            ("guidance_ramp", values["guidance_ramp"], GUIDANCE_RAMPS),
            ("confidence", values["confidence"], CONFIDENCE_SOURCES),
            ("temperature_schedule", values["temperature_schedule"], TEMPERATURE_SCHEDULES),
            ("temperature_convention", values["temperature_convention"], TEMPERATURE_CONVENTIONS),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        a, b = (tuple(values["guidance_interval"]) + (None, None))[:2]
        if len(tuple(values["guidance_interval"])) != 2 or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1 for x in (a, b)) or a > b:
            raise ConfigError(f"guidance_interval must be two numbers a <= b in [0, 1], got "
                              f"{list(values['guidance_interval'])}")
        for name in ("temperature_warmup", "top_k"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {v!r}")
        if codebook_size is not None and values["top_k"] > codebook_size:
            raise ConfigError(f"top_k={values['top_k']} is larger than the codebook ({codebook_size} codes)")
        if values["redraw_revealed"] and values["order"] == "confidence":
            raise ConfigError("redraw_revealed goes with a fixed order (random or halton), not order=confidence")
        values.update(schedule=canonical_name(self.schedule), guidance_interval=(float(a), float(b)))
        return DecodeConfig(**values)


def upstream_values(cfg: DecodeConfig) -> dict[str, object]:
    """The decode in each upstream's own parameter names and conventions (docs/decoding.md),
    where it can say it: the reproduction's ``sm_temp`` multiplies the logits, so it is 1/t of
    a dividing t; guidance as s = 1 + w for codebases that write it so."""
    t = cfg.softmax_temperature
    multiplier = t if cfg.temperature_convention == "multiply" else (1 / t if t else float("inf"))
    out: dict[str, object] = {"official.choice_temperature": cfg.choice_temperature,
                              "official.mask_scheduling_method": cfg.schedule, "official.num_iter": cfg.steps,
                              "maskgit-pytorch.step": cfg.steps, "maskgit-pytorch.sched_mode": cfg.schedule,
                              "maskgit-pytorch.r_temp": cfg.choice_temperature, "maskgit-pytorch.cfg_w": cfg.guidance_weight,
                              "maskgit-pytorch.sm_temp": multiplier, "guidance_scale_s": 1 + cfg.guidance_weight}
    if cfg.temperature_schedule == "linear":
        lo, hi = ((cfg.temperature_min, cfg.temperature_max) if cfg.temperature_convention == "multiply" else
                  tuple(1 / x if x else float("inf") for x in (cfg.temperature_min, cfg.temperature_max)))
        out.update({"halton-maskgit.sm_temp_min": lo, "halton-maskgit.sm_temp_max": hi,
                    "halton-maskgit.temp_pow": cfg.temperature_power})
    out.update({"halton-maskgit.step": cfg.steps, "halton-maskgit.w": cfg.guidance_weight,
                "halton-maskgit.randomize": cfg.halton_shift, "halton-maskgit.top_k": cfg.top_k or -1,
                "halton-maskgit.temp_warmup": cfg.temperature_warmup})
    return out


def guidance_at(cfg: DecodeConfig, s: int) -> float:
    """The guidance weight w_s of step s (0-based) under ``cfg.guidance_ramp``."""
    w, steps = cfg.guidance_weight, cfg.steps
    progress = s / (steps - 1) if steps > 1 else 1.0
    if cfg.guidance_ramp == "constant":
        return w
    if cfg.guidance_ramp == "linear":
        return w * progress
    if cfg.guidance_ramp == "cosine":
        return w * (1 - math.cos(math.pi * progress)) / 2
    lo, hi = cfg.guidance_interval
    return w if lo <= progress <= hi else 0.0


def token_temperature(cfg: DecodeConfig, s: int) -> float:
    """The token temperature of step s (in ``cfg.temperature_convention``), float32 arithmetic
    as the successor computes it."""
    if cfg.temperature_schedule == "constant":
        t = torch.tensor(cfg.softmax_temperature, dtype=torch.float32)
    else:
        t = torch.linspace(cfg.temperature_min, cfg.temperature_max, cfg.steps)[s] ** cfg.temperature_power
    if s < cfg.temperature_warmup:
        t = t * 0.5
    return float(t)


@dataclass
class DecodeResult:
    """Output of ``decode``.

    tokens: [B, N] fully decoded codes.
    states: [T, B, N] the grid after each step (``mask_id`` where still masked), or None.
    predictions: [T, B, N] the tokens sampled at every position at each step, or None.
    log_probs: [T, B, N] log p of the token sampled at each unknown position at each step
        (the distribution ``DecodeConfig.confidence`` names; NaN where the token was known), or None.
    """

    tokens: Tensor
    states: Tensor | None = None
    predictions: Tensor | None = None
    log_probs: Tensor | None = None


def _gumbel(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    u = u.clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


CDF_BLOCK = 32


def _categorical(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of ``probs`` [M, K] by the inverse CDF: a single uniform per row
    (a Gumbel-max draw needs K, and torch.multinomial is 20x slower on CPU).

    The CDF is searched in two levels, blocks of ``CDF_BLOCK`` codes and then the codes of
    the block drawn: a running sum over all K codes is a serial loop per row on the CPU
    (11 ms per sampling step at 16,000 x 1024, a tenth of a decode), block sums vectorise.
    """
    m, k = probs.shape
    blocks = -(-k // CDF_BLOCK)
    padded = probs if k == blocks * CDF_BLOCK else torch.nn.functional.pad(probs, (0, blocks * CDF_BLOCK - k))
    grouped = padded.view(m, blocks, CDF_BLOCK)
    block_cdf = grouped.sum(-1).cumsum(-1)  # [M, blocks]
    u = torch.rand(m, 1, generator=generator, device=probs.device, dtype=probs.dtype) * block_cdf[:, -1:]
    block = torch.searchsorted(block_cdf, u, right=True).clamp_(max=blocks - 1)  # [M, 1]
    below = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(u))
    inner = grouped.gather(1, block[:, :, None].expand(m, 1, CDF_BLOCK)).squeeze(1).cumsum(-1)  # [M, CDF_BLOCK]
    offset = torch.searchsorted(inner, u - below, right=True).clamp_(max=CDF_BLOCK - 1)
    return (block * CDF_BLOCK + offset).squeeze(-1).clamp_(max=k - 1)


def takes_positions(logits_fn: LogitsFn) -> bool:
    """Whether ``logits_fn`` (a function or a module's forward) has a ``positions`` argument."""
    try:
        return "positions" in inspect.signature(getattr(logits_fn, "forward", logits_fn)).parameters
    except (TypeError, ValueError):
        return False


def _guided_logits(
    logits_fn: LogitsFn,
    tokens: Tensor,
    labels: Tensor | None,
    null_label: int | None,
    weight: float,
    positions: Tensor | None = None,
) -> Tensor:
    """Logits [B, N, K], or [M, K] at ``positions`` (bool [B, N]) when given."""
    def call(x: Tensor, y: Tensor | None, where: Tensor | None) -> Tensor:
        return logits_fn(x, y) if where is None else logits_fn(x, y, positions=where)

    if weight == 0.0 or labels is None:
        return call(tokens, labels, positions)
    if null_label is None:
        raise ConfigError("classifier-free guidance needs a model trained with a null class")
    uncond = torch.full_like(labels, null_label)
    both = call(torch.cat([tokens, tokens]), torch.cat([labels, uncond]),
                None if positions is None else torch.cat([positions, positions]))
    cond, unc = both.chunk(2)  # row-major order: the first copy's positions come first
    return (1.0 + weight) * cond - weight * unc


def _draw(sub: Tensor, cfg: DecodeConfig, t: float, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """(drawn codes [M], the tempered distribution [M, K] or None for the argmax) at the
    token temperature ``t`` in ``cfg.temperature_convention``, among the ``cfg.top_k`` most
    probable codes when set."""
    if cfg.temperature_convention == "divide" and t == 0:
        return sub.argmax(dim=-1), None
    scaled = sub if t == 1 else (sub / t if cfg.temperature_convention == "divide" else sub * t)
    probs = torch.softmax(scaled, dim=-1)
    if cfg.top_k and cfg.top_k < probs.shape[-1]:
        top, idx = probs.topk(cfg.top_k, dim=-1)
        return idx.gather(-1, _categorical(top / top.sum(-1, keepdim=True), generator)[:, None]).squeeze(-1), probs
    return _categorical(probs, generator), probs


def default_grid(num_tokens: int) -> tuple[int, int]:
    """The square grid of ``num_tokens`` tokens (a fixed order needs the grid's shape)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ConfigError(f"{num_tokens} tokens are not a square grid: pass the grid's (rows, cols)")
    return side, side


@torch.no_grad()
def decode(
    logits_fn: LogitsFn,
    tokens: Tensor,
    mask_id: int,
    config: DecodeConfig,
    generator: torch.Generator,
    labels: Tensor | None = None,
    null_label: int | None = None,
    return_history: bool = False,
    grid: tuple[int, int] | None = None,
) -> DecodeResult:
    """Fill every ``mask_id`` position of ``tokens`` in ``config.steps`` parallel steps.

    Args:
        logits_fn: maps (tokens [B, N] long, labels [B] long or None) to logits
            [B, N, K] over the K codes (ids 0..K-1; ``mask_id`` is not one of them).
        tokens: [B, N] long; known codes, ``mask_id`` at unknown positions (all masked
            for generation from scratch, partly known for inpainting/outpainting).
        mask_id: the id marking unknown positions.
        config: the decode settings (validated here).
        generator: the only source of randomness; must live on ``tokens.device``.
        labels: [B] class ids for class-conditional models, or None.
        null_label: the class id meaning "no class" (needed for guidance).
        return_history: also return the grid, the predictions and the log p of the sampled
            tokens after every step.
        grid: (rows, cols) of the token grid, for the Halton order (default: square).

    Returns:
        DecodeResult with ``tokens`` [B, N] where no ``mask_id`` is left and every
        originally known token unchanged.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, N], got shape {tuple(tokens.shape)}")
    bsz, n_tok = tokens.shape
    cfg = config.validated(n_tok)
    steps = cfg.steps
    device = tokens.device

    cur = tokens.clone()
    unknown0 = (cur == mask_id).sum(dim=1)  # U0 per row, [B]
    # Tokens still masked after each step, per row (orders.masked_counts; one host read).
    masked = torch.tensor([masked_counts(cfg.mask_convention, cfg.schedule, steps, u) for u in unknown0.tolist()],
                          dtype=torch.long, device=device).reshape(bsz, steps)
    subset = takes_positions(logits_fn)
    if cfg.order != "confidence":
        order = fixed_order(cfg.order, cur == mask_id, grid or default_grid(n_tok), generator, cfg.halton_shift)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_tok, device=device).expand(bsz, n_tok))
        revealed = unknown0[:, None] - masked  # [B, T] revealed after each step
    states, preds, logps = [], [], []
    for s in range(steps):
        unknown_map = cur == mask_id  # [B, N]
        last = s == steps - 1
        if cfg.order == "confidence":
            draw_map = unknown_map
        else:  # the positions written at this step: the order's next ones (all revealed ones to redraw)
            before = revealed[:, s - 1:s] if s else torch.zeros_like(revealed[:, :1])
            draw_map = (rank < revealed[:, s:s + 1]) & ((rank >= before) | cfg.redraw_revealed)
        # Work on the positions drawn only ([M, K], M = their count): known tokens are kept,
        # so their logits need no head, no softmax and no random draws. One softmax pass gives
        # the draw and the confidence of the drawn token.
        logits = _guided_logits(logits_fn, cur, labels, null_label, guidance_at(cfg, s), draw_map if subset else None)
        if subset:
            if logits.dim() != 2 or logits.shape[0] != (m := int(draw_map.sum())):
                raise ValueError(f"logits_fn returned {tuple(logits.shape)}, expected [M={m}, K] for the unknown positions")
            sub = logits.float()
        else:
            if logits.shape[:2] != (bsz, n_tok):
                raise ValueError(f"logits_fn returned {tuple(logits.shape)}, expected [B={bsz}, N={n_tok}, K]")
            sub = logits[draw_map].float()
        if cfg.top_k > sub.shape[-1]:
            raise ConfigError(f"top_k={cfg.top_k} is larger than the codebook ({sub.shape[-1]} codes)")
        t = token_temperature(cfg, s)
        argmax = cfg.temperature_convention == "divide" and t == 0
        confident = cfg.order == "confidence" and not last
        if confident and (argmax or cfg.confidence == "model"):
            log_z = sub.logsumexp(dim=-1)  # log p under the model: logit - log Z
        picked, probs = _draw(sub, cfg, t, generator)
        sampled = cur.clone()
        sampled[draw_map] = picked
        if confident or return_history:
            if argmax or cfg.confidence == "model":
                sub_logp = sub.gather(-1, picked[:, None]).squeeze(-1) - (log_z if confident else sub.logsumexp(-1))
            else:
                sub_logp = probs.gather(-1, picked[:, None]).squeeze(-1).log()

        if last or cfg.order != "confidence":
            cur = sampled
        else:
            n_mask = masked[:, s]
            sub_conf = sub_logp
            if cfg.gumbel_anneal == "official":
                anneal = 1.0 - (s + 1) / steps
            else:
                anneal = 1.0 - (s / (steps - 1) if steps > 1 else 0.0)
            if cfg.choice_temperature > 0 and anneal > 0:
                g = _gumbel(sub_conf.shape, generator, device)
                sub_conf = sub_conf + cfg.choice_temperature * anneal * g
            confidence = torch.full((bsz, n_tok), float("inf"), device=device)
            confidence[unknown_map] = sub_conf
            # Re-mask the n_mask least confident positions of each row.
            order_c = confidence.argsort(dim=1)
            rank_masked = torch.arange(n_tok, device=device)[None, :] < n_mask[:, None]
            remask = torch.zeros_like(unknown_map).scatter(1, order_c, rank_masked)
            cur = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
        if return_history:
            states.append(cur.clone())
            preds.append(sampled.clone())
            lp = torch.full((bsz, n_tok), float("nan"), device=device)
            lp[draw_map] = sub_logp
            logps.append(lp)

    return DecodeResult(
        tokens=cur,
        states=torch.stack(states) if return_history else None,
        predictions=torch.stack(preds) if return_history else None,
        log_probs=torch.stack(logps) if return_history else None,
    )
