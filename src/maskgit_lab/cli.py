"""Command-line pieces shared by the commands: the device option and the decode options."""

from __future__ import annotations

import argparse
from dataclasses import replace

from maskgit_lab.decoding.sampler import (
    CONFIDENCE_SOURCES,
    GUIDANCE_RAMPS,
    GUMBEL_ANNEALS,
    MASK_CONVENTIONS,
    DecodeConfig,
)
from maskgit_lab.hardware import checked_device, default_device

# Command-line flag -> DecodeConfig field. Flags default to None: the checkpoint's config decides.
DECODE_FLAGS = {
    "schedule": "schedule",
    "steps": "steps",
    "gumbel_temperature": "choice_temperature",
    "softmax_temperature": "softmax_temperature",
    "cfg_weight": "guidance_weight",
    "cfg_ramp": "guidance_ramp",
    "mask_convention": "mask_convention",
    "gumbel_anneal": "gumbel_anneal",
    "confidence": "confidence",
}


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
    g.add_argument("--schedule", help="mask schedule, e.g. cosine, linear, arccos")
    g.add_argument("--steps", type=int, help="number of decoding steps T (1..N)")
    g.add_argument("--gumbel-temperature", type=float, help="choice temperature tau of the Gumbel noise")
    g.add_argument("--softmax-temperature", type=float, help="divides the logits before sampling (0 = argmax)")
    g.add_argument("--cfg-weight", type=float, help="classifier-free guidance weight w (0 = off)")
    g.add_argument("--cfg-ramp", choices=GUIDANCE_RAMPS, help="guidance ramp over the steps")
    g.add_argument("--mask-convention", choices=MASK_CONVENTIONS, help="how many tokens stay masked per step")
    g.add_argument("--gumbel-anneal", choices=GUMBEL_ANNEALS, help="annealing of the Gumbel noise")
    g.add_argument("--confidence", choices=CONFIDENCE_SOURCES,
                   help="log p of the drawn token under the tempered (default) or the model's distribution")


def decode_config_from_args(base: DecodeConfig, args: argparse.Namespace, num_tokens: int) -> DecodeConfig:
    changes = {field: getattr(args, flag) for flag, field in DECODE_FLAGS.items() if getattr(args, flag) is not None}
    return replace(base, **changes).validated(num_tokens)
