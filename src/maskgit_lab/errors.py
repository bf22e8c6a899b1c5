"""User-facing errors and the one-line error handler shared by every command."""

from __future__ import annotations

import argparse
import errno
import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from maskgit_lab.bounds import float_problem, int_problem
from maskgit_lab.process import configure
from maskgit_lab.redact import redact_text, register

F = TypeVar("F", bound=Callable[..., int | None])

# Operating-system errors that are the user's environment, not a bug: reported in one line.
FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
               errno.EISDIR}


class ConfigError(ValueError):
    """Bad input from the user: a config value, an argument, a missing file.

    Commands catch it and print a single line naming the problem and the valid
    choices, then exit with status 2.
    """


TERMINATED: list[int] = []  # the SIGTERM received, if one was


def terminate_as_interrupt() -> None:
    """SIGTERM ends a command the way Ctrl-C does (its trial marked failed, its MLflow runs
    KILLED, finished work kept), then with exit 143. Main thread only, as signals are."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        TERMINATED.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cli_errors(fn: F) -> F:
    """Wrap a command's ``main``: the process is configured first (``maskgit_lab.process``);
    a ConfigError, or an OSError of the user's files (disk full, permission, missing path),
    becomes one line on stderr and exit 2; Ctrl-C one line and 130, SIGTERM one line and 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        configure()
        terminate_as_interrupt()
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            one_line = " ".join(redact_text(exc).split())
            print(f"error: {one_line}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            if TERMINATED:
                print("terminated: finished work is kept; run the same command again to continue", file=sys.stderr)
                raise SystemExit(143) from None
            print("interrupted: finished work is kept; run the same command again to continue", file=sys.stderr)
            raise SystemExit(130) from None
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            print(redact_text(f"error: {where}{exc.strerror or exc}"), file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def fit(trainer, *args, **kwargs):
    """``trainer.fit``, with Ctrl-C reported as every command reports it (``interrupted:``,
    exit 130): Lightning shuts down gracefully on KeyboardInterrupt, then exits with 1."""
    try:
        return trainer.fit(*args, **kwargs)
    except SystemExit:
        if getattr(trainer, "interrupted", False):
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignored further Ctrl-C
            raise KeyboardInterrupt from None
        raise


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad argument is a ConfigError (under ``cli_errors``:
    one line on stderr, exit 2) instead of the usage block."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message} (see --help)")

    def _get_value(self, action, arg_string):
        """Integer and float options (in groups too) keep the bounds of ``maskgit_lab.bounds``;
        every value's URL password is registered with the redactor."""
        register(arg_string)  # a URL given on the command line is hidden from every output
        value = super()._get_value(action, arg_string)
        if action.type in (int, float) and value is not None:
            name = next((o for o in action.option_strings if o.startswith("--")), action.dest)
            problem = (int_problem if action.type is int else float_problem)(value, name)
            if problem:
                raise argparse.ArgumentError(action, problem)
        return value
