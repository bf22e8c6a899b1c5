"""The one redactor: passwords in database and tracking URLs never reach a print, a log, an
MLflow param or tag, or a file.

A URL's password is everything between the first ``:`` after ``scheme://`` and the URL's last
``@``, so a password holding ``/ @ : # ? %`` or any other character is found whole. Every URL
the suite is given is registered; ``redact_text`` then replaces each registered password (and
its percent-encoded, percent-decoded and escaped spellings) wherever it appears, and hides
the password of any other ``scheme://user:password@`` it finds.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote

MASK = "***"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@(.*)$", re.S)
# a URL inside free text that was never registered: up to the last '@' before a space or quote
_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")
_SECRETS: set[str] = set()


def _split(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password or None, host and the rest) of a URL with credentials."""
    m = _URL.match(url)
    if not m:
        return None
    scheme, userinfo, rest = m.groups()
    user, sep, password = userinfo.partition(":")
    return scheme, user, password if sep else None, rest


def spellings(secret: str) -> set[str]:
    """The ways a password may be written out: as given, percent-decoded and -encoded,
    escaped as Python's repr and JSON write it, and the pieces between URL delimiters and
    white space, and what lies before and after each delimiter (another parser that splits
    the URL at the password's first ``@`` or ``/`` shows those)."""
    out = set()
    pieces = {p for p in re.split(r"[@:/#?%\s]+", secret) if p}
    for i, c in enumerate(secret):
        if c in "@:/#?%" or c.isspace():
            pieces |= {secret[:i], secret[: i + 1], secret[i:], secret[i + 1 :]}
    for s in {secret, unquote(secret), *pieces}:
        out |= {s, quote(s, safe=""), quote(s), repr(s)[1:-1], json.dumps(s)[1:-1],
                json.dumps(s, ensure_ascii=False)[1:-1]}
    return {s for s in out if s}


def register(url: object) -> None:
    """Remember the password of ``url`` (if it has one) so that every later output hides it."""
    parts = _split(str(url)) if url else None
    if parts and parts[2]:  # one character cannot be told from the text around it: the URL rule hides it
        _SECRETS.update(s for s in spellings(parts[2]) if len(s) > 1)


def redact_url(url: object) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://user:***@host/...`` (registered too)."""
    text = str(url)
    register(text)
    parts = _split(text)
    if parts and parts[2] is not None:
        scheme, user, _, rest = parts
        return f"{scheme}{user}:{MASK}@{rest}"
    return redact_text(text)


def redact_text(text: object) -> str:
    """``text`` with every registered password, and the password of any URL in it, hidden."""
    out = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return _IN_TEXT.sub(rf"\1:{MASK}@", out)


def redact_tree(obj):
    """A JSON-like tree (dicts, lists, strings) with ``redact_text`` applied to every string."""
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_tree(v) for v in obj)
    return redact_text(obj) if isinstance(obj, str) else obj


def reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, passwords hidden before it is cut (a cut
    could leave part of a password that no longer matches), or the exception's type."""
    text = redact_text(str(exc)).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
