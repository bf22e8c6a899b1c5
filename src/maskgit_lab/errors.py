"""User-facing errors and the one-line error handler shared by every command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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


_AT_ABORT: list[Callable[[bool], None]] = []


def at_abort(fn: Callable[[bool], None]) -> None:
    """``fn(interrupted)`` runs when a command ends on an error or a signal (``interrupted``:
    Ctrl-C or SIGTERM), before its one-line message: it closes what the command left open."""
    if fn not in _AT_ABORT:
        _AT_ABORT.append(fn)


def _abort(interrupted: bool) -> None:
    for fn in _AT_ABORT:
        try:
            fn(interrupted)
        except Exception:  # noqa: BLE001, S110 - best effort: the command's own error is what the user needs
            pass


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving inside the block take effect when it ends, so a step that
    must not be cut in two (creating a run and recording that it is open) completes first.
    A second signal inside the block takes effect at once. Main thread only, as signals are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: not set from Python
    pending: list[int] = []

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def hold(signum, frame):
        pending.append(signum)
        if len(pending) > 1:
            restore()
            signal.raise_signal(signum)

    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        restore()
    if pending:
        signal.raise_signal(pending[0])  # delivered by the handler the block had replaced


def cli_errors(fn: F) -> F:
    """Wrap a command's ``main``: the process is configured first (``maskgit_lab.process``);
    a ConfigError, or an OSError of the user's files (disk full, permission, missing path),
    becomes one line on stderr and exit 2; Ctrl-C one line and 130, SIGTERM one line and 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        configure()
        terminate_as_interrupt()
        try:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
                    with deferred_interrupts():
                        _abort(isinstance(exc, KeyboardInterrupt))
                raise
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
