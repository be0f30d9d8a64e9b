"""Archive locations (``target.maintenance.archive_location``, ``icefield archive --location``): checked where
the configuration is validated and by the command, without loading the writer."""

from __future__ import annotations

import re
from urllib.parse import quote

from icefield.errors import ConfigError

__all__ = ["archive_location"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def archive_location(value: str) -> str:
    """``value`` as the URI of an archive tier: an object-store URI (``s3://bucket/prefix``) or a ``file://``
    URI as given (without a trailing ``/``), an absolute local folder as its ``file://`` URI. Raises
    :class:`ConfigError` for anything else (a relative folder, an empty value)."""
    text = str(value).strip()
    if _SCHEME.match(text):
        scheme, _, rest = text.partition("://")
        if not rest.strip("/"):
            raise ConfigError(f"archive location {value!r} names no bucket or folder; give one like 's3://cold-bucket/archive'")
        return f"{scheme.lower()}://{rest.rstrip('/')}"
    if text.startswith("/") and text.strip("/"):
        return "file://" + quote(text.rstrip("/"))
    raise ConfigError(
        f"archive location {value!r} is not an absolute folder or a URI; give one like 's3://cold-bucket/archive', "
        "'file:///mnt/cold' or '/mnt/cold'"
    )
