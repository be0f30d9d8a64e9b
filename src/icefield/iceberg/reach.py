"""What a table's metadata reaches: the files no cleanup may take, and that no cost report may call orphans.

Orphan cleanup (:mod:`icefield.write.orphans`) deletes the files under a table's location that are not
reached; the storage cost report (:mod:`icefield.iceberg.cost`) counts them. Both ask here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icefield.iceberg.storage import path_key

if TYPE_CHECKING:
    from pyiceberg.table import Table

VERSION_HINT = "version-hint.text"


def kept(uri: str, reached: set[str]) -> bool:
    """True when ``uri`` is reached, is a version hint, or is the checksum (``.name.crc``, written beside
    each file by Hadoop's local filesystem) of a reached file."""
    if path_key(uri) in reached or uri.endswith(VERSION_HINT):
        return True
    folder, _, name = uri.rpartition("/")
    return name.startswith(".") and name.endswith(".crc") and path_key(f"{folder}/{name[1:-4]}") in reached


def reachable_files(table: Table, manifests: dict[str, list[str]] | None = None) -> set[str]:
    """The keys (:func:`~icefield.iceberg.storage.path_key`) of every file ``table``'s metadata reaches: the
    current metadata file and those of its metadata log, statistics and partition-statistics files, and
    for every snapshot its manifest list, manifests and the files of their entries (deleted entries too:
    never less than a reader of any snapshot could open). ``manifests`` caches the entries of manifests
    already read (a manifest never changes)."""
    md = table.metadata
    cache: dict[str, list[str]] = manifests if manifests is not None else {}
    out: set[str] = set()
    if table.metadata_location:
        out.add(path_key(table.metadata_location))
    out.update(path_key(e.metadata_file) for e in md.metadata_log)
    out.update(path_key(s.statistics_path) for s in md.statistics)
    out.update(path_key(s.statistics_path) for s in md.partition_statistics)
    for snap in md.snapshots:
        out.add(path_key(snap.manifest_list))
        for manifest in snap.manifests(table.io):
            out.add(path_key(manifest.manifest_path))
            files = cache.get(manifest.manifest_path)
            if files is None:
                files = [e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False)]
                cache[manifest.manifest_path] = files
            out.update(path_key(p) for p in files)
    return out


MISSING_OBJECT = ("NO_SUCH_KEY", "RESOURCE_NOT_FOUND")
"""How pyarrow's S3 errors name a 404 of a GetObject: NoSuchKey, or a 404 whose answer named no error code."""


def gone(e: OSError) -> bool:
    """Whether ``e`` says the file read is gone: missing when opened (``FileNotFoundError``), or an S3 object
    deleted between its opening (a HEAD) and its reading (the GET answers 404, which pyarrow raises as a plain
    ``OSError``, see :data:`MISSING_OBJECT`; a local file once open stays readable)."""
    return isinstance(e, FileNotFoundError) or any(f"AWS Error {code} during GetObject" in str(e) for code in MISSING_OBJECT)
