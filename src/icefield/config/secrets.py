"""Secret references: ``${env:NAME}`` and ``${file:PATH}``.

Secrets never live in project files. A config value may hold a reference that is resolved at run time,
right before the value is used; every resolved value is remembered so that :func:`redact` can remove it
from any text icefield shows, logs or stores (error messages, run results).

A reference in the user-info part of a URL (``postgresql://app:${env:PGPASSWORD}@host/db``) is
percent-quoted when it is substituted: a password holding ``@``, ``:``, ``/``, ``#``, ``%`` or ``?``
stays the password instead of splitting the URL (where its tail would be read, and printed, as a host
name). Write the secret as it is, never pre-quoted. Both forms are registered for :func:`redact`.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from urllib.parse import quote

from icefield.errors import SecretError

_REF = re.compile(r"\$\{(env|file):([^}]*)\}")
_lock = threading.Lock()
_known: set[str] = set()


def has_reference(value: str) -> bool:
    """Return True if ``value`` holds at least one ``${env:..}`` or ``${file:..}`` reference."""
    return bool(_REF.search(value))


def resolve(value: str, where: str = "", base_dir: Path | None = None) -> str:
    """Replace every secret reference in ``value`` by its value.

    ``where`` names the file and key for error messages. Relative ``${file:...}`` paths are read from
    ``base_dir``. A reference inside the user-info of a URL (``scheme://user:${env:PW}@host``) is
    percent-quoted (see the module docs). Raises :class:`SecretError` naming the reference and the fix
    when it cannot be resolved. Resolved values (and their quoted forms) are registered for :func:`redact`.
    """
    in_userinfo = _userinfo_span(value)

    def sub(m: re.Match[str]) -> str:
        kind, name = m.group(1), m.group(2).strip()
        if not name:
            raise SecretError(f"{where}: empty secret reference {m.group(0)!r}; write ${{{kind}:NAME}}")
        if kind == "env":
            secret = os.environ.get(name)
            if secret is None:
                raise SecretError(
                    f"{where}: the environment variable {name} is not set (referenced as ${{env:{name}}}); "
                    f"export {name}=... before running, or change the reference"
                )
        else:
            path = Path(name).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                secret = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as e:
                raise SecretError(
                    f"{where}: cannot read the secret file {name!r} (referenced as ${{file:{name}}}): "
                    f"{e.strerror}; create the file or fix the path"
                ) from None
        _register(secret)
        if in_userinfo is not None and in_userinfo[0] <= m.start() and m.end() <= in_userinfo[1]:
            return quote(secret, safe="")
        return secret

    return _REF.sub(sub, value)


def _userinfo_span(template: str) -> tuple[int, int] | None:
    """Where the user-info of the URL ``template`` lies (start, end), references unresolved, or None
    when ``template`` is not ``scheme://...@host`` with the ``@`` outside every reference.

    References are masked first: a ``${file:/run/secrets/pw}`` holds a ``/`` that is no URL syntax."""
    masked = _REF.sub(lambda m: "x" * len(m.group(0)), template)
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", masked)
    if scheme is None:
        return None
    start = scheme.end()
    end_authority = len(masked)
    for sep in "/?#":
        i = masked.find(sep, start)
        if i != -1:
            end_authority = min(end_authority, i)
    at = masked.rfind("@", start, end_authority)
    return (start, at) if at != -1 else None


def _register(secret: str) -> None:
    # Very short values would redact ordinary words; a secret that short is not one worth hiding.
    if len(secret) < 4:
        return
    # The forms a secret takes on its way out: as written, and percent-quoted in a URL (ours quotes every
    # reserved character; SQLAlchemy's rendering of a URL keeps " +").
    forms = {secret, quote(secret, safe=""), quote(secret, safe=" +")}
    with _lock:
        _known.update(f for f in forms if len(f) >= 4)


def register_secret(secret: str) -> None:
    """Remember a value that must never be shown (e.g. a password parsed out of a URL)."""
    _register(secret)


def redact(text: str) -> str:
    """Return ``text`` with every secret resolved so far replaced by ``***``."""
    if not _known:
        return text
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def has_secrets() -> bool:
    """True once any secret has been registered (callers skip redaction work before that)."""
    return bool(_known)
