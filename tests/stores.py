"""Where a test's warehouse lives: a local folder or a prefix of the real S3 server (versitygw), so one suite
runs on both.

A module runs its tests on both stores by defining its own ``store`` fixture over :data:`STORES`::

    @pytest.fixture(params=STORES)
    def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
        return make_store(request, tmp_path)

The ``s3`` case carries the ``s3`` marker and starts the session's S3 server (``s3_server``, in
``tests/conftest.py``) only when it runs. A :class:`Store` gives the warehouse location, the catalog
properties and the ``icefield.yaml`` keys that reach it, and lists the files under it (what a test
checks was written or deleted).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STORES = ["local", pytest.param("s3", marks=pytest.mark.s3)]
"""The parameters of a ``store`` fixture that runs a suite on the local folder and on S3."""


@dataclass
class Store:
    """A warehouse for one test: ``uri`` (``file://...`` or ``s3://bucket/prefix``), the FileIO ``props``
    of a catalog that reaches it and the ``storage`` section of a project that does."""

    kind: str
    uri: str
    props: dict[str, str] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    _fs: Any = None
    _root: str = ""

    def catalog(self, db: Path, name: str = "icefield") -> Any:
        """A SQL catalog on the SQLite file ``db`` whose warehouse is this store."""
        from icefield.catalog import sql_catalog

        return sql_catalog(name, f"sqlite:///{db}", self.uri, **self.props)

    def project(self, **config: Any) -> dict[str, Any]:
        """``icefield.yaml`` keys for a project whose warehouse is this store (``config`` added)."""
        out: dict[str, Any] = {"name": "test", "warehouse": self.uri, **config}
        if self.storage:
            out["storage"] = dict(self.storage)
        return out

    def location(self, *parts: str) -> str:
        """A location under the warehouse (``location("archive")``)."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def files(self, under: str = "") -> list[str]:
        """Every file under the warehouse (or under ``under``, a location of this store), as paths relative
        to it, sorted."""
        from pyarrow import fs as pafs

        base = self._root if not under else self._path(under)
        infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) :].lstrip("/") for i in infos if i.type == pafs.FileType.File)

    def sizes(self, under: str = "") -> dict[str, int]:
        """The size in bytes of every file under the warehouse (or under ``under``), by its path relative to it."""
        from pyarrow import fs as pafs

        base = self._root if not under else self._path(under)
        infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {i.path[len(base) :].lstrip("/"): int(i.size) for i in infos if i.type == pafs.FileType.File}

    def put(self, location: str, data: bytes) -> None:
        """Write ``data`` as the file ``location`` (a location of this store)."""
        path = self._path(location)
        if self.kind == "local":  # S3's folders are prefixes: nothing to make
            self._fs.create_dir(path.rpartition("/")[0], recursive=True)
        with self._fs.open_output_stream(path) as out:
            out.write(data)

    def names(self, under: str = "") -> set[str]:
        """The base names of :meth:`files`."""
        return {p.rsplit("/", 1)[-1] for p in self.files(under)}

    def exists(self, location: str) -> bool:
        from pyarrow import fs as pafs

        return bool(self._fs.get_file_info(self._path(location)).type == pafs.FileType.File)

    def _path(self, location: str) -> str:
        if location.startswith("file://"):
            return location.removeprefix("file://")
        return location.split("://", 1)[1] if "://" in location else location


def make_store(request: pytest.FixtureRequest, tmp_path: Path, kind: str | None = None) -> Store:
    """The store ``kind`` (default ``request.param``) for one test: ``tmp_path/wh`` or a fresh prefix of the
    session's S3 server, reached with its writer account."""
    from pyarrow import fs as pafs

    kind = kind or request.param
    if kind == "local":
        root = (tmp_path / "wh").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return Store("local", root.as_uri(), _fs=pafs.LocalFileSystem(), _root=root.as_posix())
    assert kind == "s3", kind
    s3 = request.getfixturevalue("s3_server")
    prefix = f"{s3.bucket}/{uuid.uuid4().hex[:12]}"
    props = {
        "s3.endpoint": s3.endpoint,
        "s3.region": "us-east-1",
        "s3.path-style-access": "true",
        "s3.access-key-id": s3.writer_key,
        "s3.secret-access-key": s3.writer_secret,
    }
    storage = {
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "path_style": True,
        "access_key": s3.writer_key,
        "secret_key": s3.writer_secret,
    }
    fs = pafs.S3FileSystem(
        access_key=s3.writer_key, secret_key=s3.writer_secret, endpoint_override=s3.endpoint,
        scheme="http", region="us-east-1",
    )
    return Store("s3", f"s3://{prefix}", props, storage, _fs=fs, _root=prefix)
