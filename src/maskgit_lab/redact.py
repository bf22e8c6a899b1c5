"""The one redactor: passwords in database and tracking URLs never reach a print, a log, an
MLflow param or tag, or a file.

A URL's password is everything between the first ``:`` after ``scheme://`` and the URL's last
``@``, so a password holding ``/ @ : # ? %`` or any other character is found whole. Every URL
the suite is given is registered. ``redact_text`` (lines, log records, MLflow) then hides each
registered URL and password in the spellings libraries print them, and the password of any
other ``scheme://user:password@`` it finds; ``redact_file_text`` (files the suite writes) hides
URLs only, so a short password never rewrites a number in a data file.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote

MASK = "***"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@(.*)$", re.S)
# a URL inside free text that was never registered: up to the last '@' before a space or quote
_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")
DELIMITERS = "@:/#?%"
REQUOTE_SAFE = "!#$%&'()*+,/:;=?@[]~"  # what HTTP clients leave unquoted when they re-quote a URL
_URLS: dict[str, str] = {}  # a registered URL's spellings -> its redacted form
_SECRETS: set[str] = set()  # registered passwords' spellings, and what other parsers show of them
_PASSWORDS: set[str] = set()  # registered passwords as given


def _split(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password or None, host and the rest) of a URL with credentials."""
    m = _URL.match(url)
    if not m:
        return None
    scheme, userinfo, rest = m.groups()
    user, sep, password = userinfo.partition(":")
    return scheme, user, password if sep else None, rest


def spellings(text: str) -> set[str]:
    """``text`` as given, percent-decoded and -encoded (as a whole, as a path, as HTTP clients
    re-quote a URL), and escaped as repr and JSON write it."""
    out = set()
    for s in {text, unquote(text)}:
        out |= {s, quote(s, safe=""), quote(s, safe=":/@"), quote(s, safe=REQUOTE_SAFE), repr(s)[1:-1],
                json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1]}
    return {s for s in out if s}


def misparsed(user: str, password: str, rest: str) -> set[str]:
    """What a parser that ends the password at one of its delimiters shows: the user with the
    password's beginning, or the password's end taken for the host."""
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hosts = {netloc, netloc.rsplit(":", 1)[0]}  # with and without the port
    out = set()
    for i, c in enumerate(password):
        if c in DELIMITERS or c.isspace():
            if password[:i]:
                out.add(f"{user}:{password[:i]}")
            out |= {f"{password[i:]}@{h}" for h in hosts}
            if password[i + 1 :]:
                out |= {f"{password[i + 1 :]}@{h}" for h in hosts}
    return out


def register(url: object) -> str | None:
    """Remember ``url`` and its password (if it has one) so that every later output hides them;
    -> its redacted form (None when it holds no password)."""
    text = str(url) if url else ""
    parts = _split(text)
    if not parts or parts[2] is None:
        return None
    scheme, user, password, rest = parts
    redacted = f"{scheme}{user}:{MASK}@{rest}"
    if not password:
        return redacted
    _URLS.update({s: redacted for s in spellings(text)})
    # one character cannot be told from the text around it: the URL rules hide it
    _PASSWORDS.add(password)
    shown = {s for piece in {password} | misparsed(user, password, rest) for s in spellings(piece)}
    _SECRETS.update(s for s in shown if len(s) > 1)
    return redacted


def forget() -> None:
    """Drop every registered URL (a process runs one command; tests run many)."""
    _URLS.clear()
    _SECRETS.clear()
    _PASSWORDS.clear()


def redact_url(url: object) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://user:***@host/...`` (registered too)."""
    redacted = register(url)
    return redacted if redacted is not None else redact_text(url)


def _hide_urls(text: str) -> str:
    for url in sorted(_URLS, key=len, reverse=True):
        text = text.replace(url, _URLS[url])
    return _IN_TEXT.sub(rf"\1:{MASK}@", text)


def redact_text(text: object) -> str:
    """``text`` with every registered URL and password, and the password of any URL in it, hidden."""
    out = _hide_urls(str(text))
    for secret in sorted(_SECRETS, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def redact_file_text(text: str) -> str:
    """A file's text with every registered URL, and the password of any URL in it, hidden."""
    return _hide_urls(text)


def redact_tree(obj):
    """A JSON-like tree (dicts, lists, strings) with ``redact_text`` applied to every string."""
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_tree(v) for v in obj)
    return redact_text(obj) if isinstance(obj, str) else obj


def reason(exc: BaseException, limit: int = 200) -> str:
    """The first line of a library's message about a URL it could not use, or the exception's
    type. Such a message may show any piece of the password (its parser split the URL
    elsewhere), so every run of two or more of a registered password's characters is hidden
    in it, before it is cut."""
    text = redact_text(str(exc))
    for password in _PASSWORDS:
        pieces = {password[i:j] for i in range(len(password)) for j in range(i + 2, len(password) + 1)}
        for piece in sorted(pieces, key=len, reverse=True):
            text = text.replace(piece, MASK)
    text = text.strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
