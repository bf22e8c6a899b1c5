"""User-facing errors and the one-line error handler shared by every command."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


class ConfigError(ValueError):
    """Bad input from the user: a config value, an argument, a missing file.

    Commands catch it and print a single line naming the problem and the valid
    choices, then exit with status 2.
    """


def cli_errors(fn: F) -> F:
    """Wrap a command's ``main`` so a ConfigError becomes one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            one_line = " ".join(str(exc).split())
            print(f"error: {one_line}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def checked_device(name: str) -> str:
    """A ``--device`` value this machine can run on, else a ConfigError naming the valid ones."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:<index>") from None
    if device.type == "cpu":
        return name
    if device.type != "cuda":
        raise ConfigError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:<index>")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {name} requested but no CUDA device is available; use --device cpu")
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s); valid: cpu, cuda, "
                          f"cuda:0..{count - 1}")
    return name


class _DeviceAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, checked_device(values))


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option every command shares: CUDA when present, else the CPU. A device
    this machine lacks is refused while parsing, as a ConfigError (one line under ``cli_errors``)."""
    import torch

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", action=_DeviceAction,
                        help="cpu, cuda or cuda:<index> (default: cuda when available)")
