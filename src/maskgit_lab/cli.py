"""Command-line pieces shared by the commands: the device option and the decode options."""

from __future__ import annotations

import argparse
from dataclasses import replace

from maskgit_lab.decoding.orders import MASK_CONVENTIONS, ORDERS
from maskgit_lab.decoding.sampler import (
    CONFIDENCE_SOURCES,
    GUIDANCE_RAMPS,
    GUMBEL_ANNEALS,
    PRESETS,
    TEMPERATURE_CONVENTIONS,
    TEMPERATURE_SCHEDULES,
    DecodeConfig,
)
from maskgit_lab.hardware import checked_device, default_device

# Command-line flag -> DecodeConfig field. Flags default to None: the checkpoint's config decides.
DECODE_FLAGS = {
    "schedule": "schedule",
    "steps": "steps",
    "order": "order",
    "halton_shift": "halton_shift",
    "gumbel_temperature": "choice_temperature",
    "softmax_temperature": "softmax_temperature",
    "temperature_schedule": "temperature_schedule",
    "temperature_min": "temperature_min",
    "temperature_max": "temperature_max",
    "temperature_power": "temperature_power",
    "temperature_warmup": "temperature_warmup",
    "temperature_convention": "temperature_convention",
    "top_k": "top_k",
    "cfg_weight": "guidance_weight",
    "cfg_ramp": "guidance_ramp",
    "cfg_interval": "guidance_interval",
    "mask_convention": "mask_convention",
    "gumbel_anneal": "gumbel_anneal",
    "confidence": "confidence",
    "redraw_revealed": "redraw_revealed",
    "preset": "preset",
}


def _interval(text: str) -> tuple[float, float]:
    """'a,b' -> (a, b) (checked by DecodeConfig.validated)."""
    parts = text.split(",")
    try:
        return tuple(float(x) for x in parts) if len(parts) == 2 else (float("nan"),) * 3
    except ValueError:
        return (float("nan"),) * 3


class _DeviceAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, checked_device(values))


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option every command shares: CUDA when present, else the CPU. A device
    this machine lacks is refused while parsing, as a ConfigError (one line under ``cli_errors``)."""
    parser.add_argument("--device", default=default_device(), action=_DeviceAction,
                        help="cpu, cuda or cuda:<index> (default: cuda when available)")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """The decode flags shared by every command that samples."""
    g = parser.add_argument_group("decoding (default: the checkpoint's sampling config)")
    g.add_argument("--preset", choices=tuple(PRESETS), help="an upstream sampler's conventions (docs/decoding.md)")
    g.add_argument("--schedule", help="mask schedule, e.g. cosine, linear, arccos")
    g.add_argument("--steps", type=int, help="number of decoding steps T (1..N)")
    g.add_argument("--order", choices=ORDERS, help="which positions are revealed")
    g.add_argument("--halton-shift", action="store_true", default=None,
                   help="roll the Halton order by a random offset per sample")
    g.add_argument("--gumbel-temperature", type=float, help="choice temperature tau of the Gumbel noise")
    g.add_argument("--softmax-temperature", type=float, help="token temperature t (0 = argmax when it divides)")
    g.add_argument("--temperature-schedule", choices=TEMPERATURE_SCHEDULES, help="t constant, or linear min -> max")
    g.add_argument("--temperature-min", type=float, help="linear schedule: t at the first step")
    g.add_argument("--temperature-max", type=float, help="linear schedule: t at the last step")
    g.add_argument("--temperature-power", type=float, help="linear schedule: t raised to this power")
    g.add_argument("--temperature-warmup", type=int, help="steps whose temperature is halved")
    g.add_argument("--temperature-convention", choices=TEMPERATURE_CONVENTIONS,
                   help="divide: softmax(logits / t); multiply: softmax(logits * t)")
    g.add_argument("--top-k", type=int, help="draw among the k most probable codes (0 = all)")
    g.add_argument("--cfg-weight", type=float, help="classifier-free guidance weight w (0 = off)")
    g.add_argument("--cfg-ramp", choices=GUIDANCE_RAMPS, help="guidance ramp over the steps")
    g.add_argument("--cfg-interval", type=_interval, metavar="A,B",
                   help="interval ramp: guidance while s/(T-1) lies in [A, B]")
    g.add_argument("--mask-convention", choices=MASK_CONVENTIONS, help="how many tokens stay masked per step")
    g.add_argument("--gumbel-anneal", choices=GUMBEL_ANNEALS, help="annealing of the Gumbel noise")
    g.add_argument("--confidence", choices=CONFIDENCE_SOURCES,
                   help="log p of the drawn token under the tempered (default) or the model's distribution")
    g.add_argument("--redraw-revealed", action="store_true", default=None,
                   help="a fixed order draws every revealed position again at each step")


def decode_config_from_args(base: DecodeConfig, args: argparse.Namespace, num_tokens: int,
                            codebook_size: int | None = None) -> DecodeConfig:
    changes = {field: getattr(args, flag) for flag, field in DECODE_FLAGS.items() if getattr(args, flag) is not None}
    return replace(base, **changes).validated(num_tokens, codebook_size)
