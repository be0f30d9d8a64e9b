"""How DuckDB reaches a table's data files in an object store (``s3://``).

DuckDB 2.0 has no ``httpfs`` extension offline, and icefield never installs extensions at run time, so
DuckDB reads object-store files through the table's own pyarrow filesystem (pyiceberg's
``PyArrowFileIO.fs_by_scheme``, configured by the catalog's ``s3.*`` properties: endpoint, region,
credentials), registered on the connection as an fsspec filesystem for the location's scheme. DuckDB then
reads those files as it reads local ones: only the row groups and columns a query needs (ranged GETs), in
a stream, with the same field-id mapping and the same anti-join on deleted rows; and a locked connection
still reads only the exact files of its views (``allowed_paths``).

A local file is read by its path; a scheme this module does not know is left to pyiceberg's Arrow scan
(:func:`icefield.query.register_table`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.table import Table

__all__ = ["OBJECT_STORE_SCHEMES", "PositionalFile", "duck_path", "readable_store"]

OBJECT_STORE_SCHEMES = ("s3", "s3a", "s3n")
"""The schemes DuckDB reads through the table's pyarrow filesystem (pyiceberg maps all three to S3)."""


def readable_store(path: str) -> bool:
    """True when ``path`` (a data file's location) lies in an object store DuckDB can be given a filesystem for."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_STORE_SCHEMES


def duck_path(con: duckdb.DuckDBPyConnection, table: Table, path: str) -> str:
    """The name DuckDB reads the data file ``path`` of ``table`` by: a local path without ``file://``, or
    the object-store URI itself once the table's filesystem for its scheme is registered on ``con`` (the
    first table of a scheme registers it; tables of one catalog share its properties)."""
    if path.startswith(("file://", "/")):
        return path.removeprefix("file://")
    scheme = path.partition("://")[0].lower()
    _register(con, table, scheme, path)
    return path


def _register(con: duckdb.DuckDBPyConnection, table: Table, scheme: str, path: str) -> None:
    if scheme in {fs.lower() for fs in con.list_filesystems()}:
        return
    from pyiceberg.io.pyarrow import PyArrowFileIO

    from icefield.errors import ConfigError

    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise ConfigError(
            f"reading {path} with DuckDB needs pyiceberg's PyArrowFileIO, not {type(io).__name__}: set the catalog "
            "property py-io-impl to pyiceberg.io.pyarrow.PyArrowFileIO"
        )
    parsed_scheme, netloc, _ = io.parse_location(path, io.properties)
    con.register_filesystem(_fsspec(io.fs_by_scheme(parsed_scheme, netloc), scheme))


def _fsspec(filesystem: Any, scheme: str) -> Any:
    """``filesystem`` (pyarrow's) as an fsspec filesystem that answers to ``scheme://``: DuckDB routes a
    path to the registered filesystem whose protocol prefixes it, and the wrapper strips that prefix
    (``s3://bucket/key`` -> ``bucket/key``, pyarrow's S3 path). Files open for reading as
    :class:`PositionalFile`."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    def _open(self: Any, path: str, mode: str = "rb", block_size: int | None = None, **kwargs: Any) -> Any:
        if mode != "rb":
            return ArrowFSWrapper._open(self, path, mode, block_size, **kwargs)
        return PositionalFile(self.fs.open_input_file(self._strip_protocol(path)))

    cls = type(f"IcefieldArrowFS_{scheme}", (ArrowFSWrapper,), {"protocol": scheme, "cachable": False, "_open": _open})
    return cls(filesystem)


class PositionalFile:
    """A read-only file whose position is each thread's own, every read a positional one (``read_at``).

    DuckDB reads a file from several threads through one handle, each read a ``seek`` then a ``read``:
    with one shared position, another thread's seek lands between them and a read returns bytes of the
    wrong place (a Parquet footer or page that does not decode: "ZSTD Decompression failure", "don't know
    what type"). pyarrow's random-access files read at a position safely from any thread."""

    def __init__(self, raf: Any) -> None:
        self._raf = raf
        self._size = int(raf.size())
        self._at = threading.local()
        self.closed = False

    @property
    def size(self) -> int:
        return self._size

    def _pos(self) -> int:
        return int(getattr(self._at, "pos", 0))

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos(), 2: self._size}[whence]
        self._at.pos = max(0, base + offset)
        return int(self._at.pos)

    def tell(self) -> int:
        return self._pos()

    def read(self, n: int = -1) -> bytes:
        pos = self._pos()
        if n is None or n < 0:
            n = self._size - pos
        n = max(0, min(n, self._size - pos))
        data = self._raf.read_at(n, pos) if n else b""
        self._at.pos = pos + len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._raf.close()

    def __enter__(self) -> PositionalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
