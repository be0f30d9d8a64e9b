"""Listing the files under a location of the object store (a local folder today, S3 later).

Orphan cleanup and ``icefield catalog register`` need what pyiceberg's ``FileIO`` lacks: a listing of the
files under a prefix, with their sizes and modification times. :func:`list_files` is the one place that
lists; it goes through the table's own pyarrow filesystem (``PyArrowFileIO.fs_by_scheme``), configured by
the catalog's properties, so the same call lists an S3 prefix with the catalog's endpoint and credentials.
A store whose listing needs something else (another FileIO, a paginated API) is taught here, and nowhere
else. Paths are compared with :func:`path_key`, which ignores how a URI spells a local path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from icefield.errors import ConfigError, TerminalError
from icefield.iceberg.tables import reaching_storage

if TYPE_CHECKING:
    from pyiceberg.io import FileIO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredFile:
    """A file of the object store: its URI (in the form of the listed location), size and modification time."""

    uri: str
    size: int
    mtime: float
    """Seconds since the epoch (the object's last-modified time on S3); infinity when the store did not say."""


def path_key(uri: str) -> str:
    """``uri`` as a comparable key: ``file:///a/b``, ``file:/a/b`` and ``/a/b`` are one file; other schemes
    keep their bucket (``s3://b/k`` -> ``s3://b/k``)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else uri
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


def list_files(io: FileIO, location: str) -> list[StoredFile]:
    """Every file under the folder (or prefix) ``location``, recursively; [] when there is none.

    Lists through ``io``'s pyarrow filesystem for the location's scheme. Raises
    :class:`~icefield.errors.TransientError` when the store cannot be reached,
    :class:`~icefield.errors.TerminalError` for other storage errors, and :class:`~icefield.errors.ConfigError` for a FileIO that cannot list (not pyarrow's)."""
    from pyarrow import fs as pafs
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not isinstance(io, PyArrowFileIO):
        raise ConfigError(
            f"listing {location} needs pyiceberg's PyArrowFileIO, not {type(io).__name__}: set the catalog property "
            "py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO"
        )
    scheme, netloc, path = io.parse_location(location, io.properties)
    filesystem = io.fs_by_scheme(scheme, netloc)
    base = location.rstrip("/")
    root = path.rstrip("/")
    try:
        with reaching_storage(f"listing {location}"):
            infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    except OSError as e:  # a refused permission, a bad bucket: a retry cannot help
        raise TerminalError(f"listing {location} failed: {e}; check that the warehouse can be read there") from e
    out: list[StoredFile] = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/") if info.path.startswith(root) else info.path
        # A file whose age is unknown counts as new: an age guard never takes it.
        mtime = info.mtime.timestamp() if info.mtime is not None else float("inf")
        out.append(StoredFile(uri=f"{base}/{rel}", size=int(info.size or 0), mtime=mtime))
    return out
