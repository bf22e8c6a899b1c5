"""User-facing errors and the one-line error handler shared by every command."""

from __future__ import annotations

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
