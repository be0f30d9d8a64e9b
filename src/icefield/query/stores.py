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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    from pyiceberg.table import Table

__all__ = ["OBJECT_STORE_SCHEMES", "duck_path", "readable_store"]

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
    (``s3://bucket/key`` -> ``bucket/key``, pyarrow's S3 path)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    cls = type(f"IcefieldArrowFS_{scheme}", (ArrowFSWrapper,), {"protocol": scheme, "cachable": False})
    return cls(filesystem)
