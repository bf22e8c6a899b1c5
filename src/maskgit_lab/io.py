"""Atomic file output, content hashes and provenance shared by every writer.

Outputs are only ever regular files: a path that names a directory, a device, a socket or
a symbolic link is refused (before any work, by ``check_output``), so a mistyped ``--out``
can neither replace /dev/null nor write through a link to somewhere else.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from maskgit_lab.errors import ConfigError
from maskgit_lab.redact import redact_file_text


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On error the temporary file is removed and ``path`` is left as it was, so readers
    never see a half-written result.
    """
    final = check_output(path)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
        os.close(fd)
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        check_output(final)  # still a regular file (or nothing) at the moment it is replaced
        os.replace(tmp, final)
    except OSError as exc:
        raise ConfigError(f"cannot write {final}: {os_reason(exc)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically, URL passwords hidden (maskgit_lab.redact)."""
    text = redact_file_text(text)
    return atomic_write(path, lambda p: p.write_text(text))


def publish_report(text: str, path: str | Path | None) -> None:
    """A command's markdown report: written atomically to ``path`` when one is given, and printed."""
    if path is not None:
        atomic_write_text(path, text)
    print(text, end="")


def content_key(obj, length: int = 16) -> str:
    """Hex SHA-256 of ``obj`` as canonical JSON (sorted keys; non-JSON values as str):
    the key of every cache and study whose identity is a set of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: str | Path, length: int = 16) -> str:
    """Hex SHA-256 of a file's bytes (first ``length`` characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


_DIGESTS: dict[tuple, str] = {}


def content_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read again whenever the file may have changed: the digest is
    remembered per (device, inode, size, modification and inode-change time), and any write, even one
    that restores size and modification time, moves the inode-change time."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_sha256(path, 64)
    return _DIGESTS[key]


def git_commit() -> str:
    """The current git commit of the project (with '+dirty' for local changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def sqlite_init_lock(url: str):
    """Serialise the first use of a SQLite database by several local processes (schema
    creation and migrations are not safe to race); a no-op for server databases. Used by
    the Optuna storage and the MLflow store alike."""
    if not url.startswith("sqlite:///"):
        yield
        return
    db = Path(url[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def os_reason(exc: OSError) -> str:
    """A short reason for a failed write: 'no space left on the device', 'permission denied'..."""
    names = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of the path is not a folder",
             errno.EISDIR: "it is a folder"}
    return names.get(exc.errno, exc.strerror or type(exc).__name__)


def check_output(path: str | Path, what: str = "output") -> Path:
    """``path`` if a regular file can be written there, else a ConfigError saying why: the
    path is a link, a folder or another non-regular file, a part of it is a file, or the
    nearest existing folder is not writable. Call it before long work."""
    p = Path(path)
    if p.is_symlink():
        raise ConfigError(f"{what} {p} is a symbolic link; outputs are written only as regular files: give the "
                          "link's target or another path")
    if p.exists() and not p.is_file():
        kind = "a folder" if p.is_dir() else "not a regular file (a device, socket or pipe)"
        raise ConfigError(f"{what} {p} is {kind}; give the path of a file")
    ancestor = p.parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {p} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p} cannot be created: no permission to write in {ancestor}")
    return p


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` if it is (or can be created as) a writable folder, else a ConfigError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} exists and is not a folder")
    check_output(p / ".probe", what)  # same ancestry and permission checks for a file inside it
    return p
