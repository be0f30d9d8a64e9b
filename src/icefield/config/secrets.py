"""Secret references: ``${env:NAME}`` and ``${file:PATH}``.

Secrets never live in project files. A config value may hold a reference that is resolved at run time,
right before the value is used; every resolved value is remembered so that :func:`redact` can remove it
from any text icefield shows, logs or stores (error messages, run results).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

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
    ``base_dir``. Raises :class:`SecretError` naming the reference and the fix when it cannot be resolved.
    Resolved values are registered for :func:`redact`.
    """

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
        return secret

    return _REF.sub(sub, value)


def _register(secret: str) -> None:
    # Very short values would redact ordinary words; a secret that short is not one worth hiding.
    if len(secret) >= 4:
        with _lock:
            _known.add(secret)


def register_secret(secret: str) -> None:
    """Remember a value that must never be shown (e.g. a password parsed out of a URL)."""
    _register(secret)


def redact(text: str) -> str:
    """Return ``text`` with every secret resolved so far replaced by ``***``."""
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text
