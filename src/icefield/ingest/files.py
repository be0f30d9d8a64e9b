"""The ``files`` source: CSV, JSON Lines and Parquet files matched by a glob.

Incremental by the set of files already loaded: the committed position maps each loaded file (path
relative to the project) to a fingerprint of its bytes. A new file is loaded; a file whose bytes changed
is reloaded and its earlier rows are replaced in the same commit (so it is never skipped nor doubled);
an unchanged file is skipped. Each file is one batch.

Where files may be read: the glob matches in the project folder, or in the folders the source lists in
``roots``. Every match is resolved (symbolic links followed) and refused with a :class:`ConfigError` when
it lies outside those folders; icefield's own state (``.icefield/``, the catalog database, a local
warehouse) is never read. A file is named, in the position and the file column, by its path relative to
the project (a file of a declared root: the root as written, then the path inside it).

Odd files never fail a run nor hold up the files after them: a file that cannot be decoded at all (an
unknown extension, a broken Parquet file, a text encoding that does not decode, a header with a reserved
name) goes to the quarantine as one ``decode`` row; a file that cannot be read (removed since it was
listed, no permission) is skipped with a warning, and the next run tries it again. A byte order mark is dropped; a CSV file that starts
with a UTF-16 or UTF-32 one is read in that encoding (JSON Lines is UTF-8).

Only the bytes that were fingerprinted are read, so a file appended to meanwhile is read as it was. A
text file whose last line has no line end yet, and that grows (now, or before it is ``SETTLE_SECONDS``
old), is still being written: that line is left for the next run (the file is recorded with the
fingerprint of what was read, so the next run replaces it whole) instead of quarantining half a record
that the next run reads whole.

An engine that reads ``files`` sources itself (Spark; :meth:`FilesSource.read_with`) reads the chosen files once
the table exists: the source still lists, fingerprints and chooses the files and cuts the batches, from the
records the engine counts in each file (:meth:`FilesSource._engine_read`); the engine decodes the fingerprinted
bytes with this module's decoders and the table's types (:func:`decode_files_in_engine`) and holds the records,
each batch's taken out of that read. Records refused or not decodable as the table is come back to the run
(:meth:`FilesSource._redecode`). A file it cannot read as this module does is read here (see ``docs/spark.md``).
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from icefield.columns import column_name_problem, constant
from icefield.config.models import FilesSourceConfig
from icefield.config.secrets import has_reference
from icefield.errors import ConfigError, TransientError
from icefield.ingest import (
    Rejected,
    Source,
    SourceBatch,
    SourceCapabilities,
    match_files,
    rebatch,
    window_batches,
)
from icefield.ingest.coerce import cast_column, infer_type, parse_type, records_to_table

if TYPE_CHECKING:
    from icefield.config import PipelineConfig, Project
    from icefield.config.window import Window
    from icefield.engines.base import Engine, Frame

log = logging.getLogger(__name__)

Describe = Callable[[list[int]], list[tuple[str, str]]]
# A CSV record of the wrong shape: (record index, text, exact bytes if not UTF-8, number of fields).
_Short = tuple[int, str, bytes | None, int]

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_HEAD_BYTES = 64 << 10
"""How much of a file a whole-file quarantine row keeps (the file itself stays where it is)."""


def fingerprint(path: Path) -> str:
    """``<size>:<sha256>`` of a file's bytes."""
    return _snapshot(path, text=False).fp


@dataclass(frozen=True)
class _Snapshot:
    """What a run reads of a file: its first ``size`` bytes, whose fingerprint is ``fp``."""

    fp: str
    size: int


def _snapshot(path: Path, text: bool) -> _Snapshot:
    """Fingerprint the file; for a ``text`` file whose last line has no line end yet and that is still
    being written, only the bytes up to that line (see the module docs). Still being written: it grew
    after it was fingerprinted, watched until it is :data:`SETTLE_SECONDS` old (a file not modified for
    that long is not waited for). Raises :class:`OSError` when the file cannot be read
    (``FileNotFoundError`` when it is gone)."""
    h = hashlib.sha256()
    size = 0
    upto: tuple[Any, int] | None = None  # the hash and size of the bytes up to the last line end
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            if text:
                view = memoryview(chunk)
                j = chunk.rfind(b"\n")
                if j >= 0:
                    h.update(view[: j + 1])
                    upto = (h.copy(), size + j + 1)
                    h.update(view[j + 1 :])
                else:
                    h.update(chunk)
            else:
                h.update(chunk)
            size += len(chunk)
        ended = not text or size == 0 or (upto is not None and upto[1] == size)
        if not ended and _grows(f.fileno(), size):
            # The last line was being written when it was read: leave it for the next run.
            done, n = upto if upto is not None else (hashlib.sha256(), 0)
            return _Snapshot(f"{n}:{done.hexdigest()}", n)
    return _Snapshot(f"{size}:{h.hexdigest()}", size)


SETTLE_SECONDS = 0.5
"""How long a text file whose last line has no line end must go unmodified to count as written whole."""


def _grows(fd: int, size: int) -> bool:
    """Whether the open file ``fd``, of which ``size`` bytes were read, is being written: it has more
    bytes, now or once it is :data:`SETTLE_SECONDS` old."""
    st = os.fstat(fd)
    age = time.time() - st.st_mtime
    if st.st_size == size and 0 <= age < SETTLE_SECONDS:
        time.sleep(SETTLE_SECONDS - age)
        st = os.fstat(fd)
    return st.st_size > size


class _Unreadable(Exception):
    """A file (or the rest of one) that cannot be decoded; it goes to the quarantine as one row."""


class FileScope:
    """Where a source that reads files may read: the project folder and the declared ``roots``, never
    icefield's own files (:func:`_icefield_paths`). Every match is resolved (symbolic links followed) and must
    stay in the folder the glob matches in (or a declared root); the glob's folder itself must lie in the
    allowed folders, which is checked before anything is listed (:class:`ConfigError` naming the path and the
    fix). Used by the ``files`` source and the ``debezium`` source's ``path``."""

    def __init__(self, project: Project, pattern: str, roots: list[str], where: str) -> None:
        self.root = project.root
        self.pattern = pattern
        self.declared_roots = list(roots)
        self.where = where
        # Where matches may lie: (the name a file there gets as a prefix, the folder resolved).
        self.roots: list[tuple[str, Path]] = [("", self.root.resolve())]
        for declared in roots:
            folder = Path(declared).expanduser()
            self.roots.append((posixpath.normpath(declared), (folder if folder.is_absolute() else self.root / folder).resolve()))
        self.excluded = _icefield_paths(project)
        self.folder = self._check_pattern()

    def _check_pattern(self) -> Path:
        """The folder the glob matches in (its components before the first wildcard), resolved. Refuses a
        glob whose folder lies outside the allowed folders, before anything is listed."""
        pattern = Path(self.pattern).expanduser()
        folder = Path(os.path.normpath(pattern if pattern.is_absolute() else self.root / pattern))
        fixed = Path(*_fixed_parts(folder.parts)) if folder.parts else folder
        if fixed == folder:  # no wildcard: the glob names one file
            fixed = fixed.parent
        if not any(_within(fixed, allowed) or _within(fixed.resolve(), allowed) for _, allowed in self.roots):
            raise ConfigError(
                f"{self.where}.path {self.pattern!r} matches files in {fixed}, outside the project folder "
                f"{self.root}{' and source.roots' if self.declared_roots else ''}; keep the files in the project, or list "
                f"their folder in source.roots (e.g. roots: [{fixed.as_posix()!r}])"
            )
        return fixed.resolve()

    def list_files(self) -> list[Path]:
        """The files the glob matches, resolved (symbolic links followed), in name order, each once;
        icefield's own files left out. Raises :class:`ConfigError` for a match that lies outside the
        folder the glob matches in (a link out of it) and outside every declared root, or outside the
        project folder and every declared root."""
        out: dict[Path, None] = {}
        declared = [folder for prefix, folder in self.roots if prefix]
        for path in match_files(self.root, self.pattern):
            real = path.resolve()
            if any(_within(real, x) for x in self.excluded):
                log.debug("%s: icefield's own file, not read", path)
                continue
            inside = any(_within(real, allowed) for _, allowed in self.roots)
            if not inside or not (_within(real, self.folder) or any(_within(real, r) for r in declared)):
                shown = f"{path} (a link to {real})" if real != Path(os.path.abspath(path)) else str(path)
                where = f"the project folder {self.root}" if not inside else f"the folder the glob matches in, {self.folder}"
                raise ConfigError(
                    f"{self.where}.path {self.pattern!r} matches {shown}, outside {where}"
                    f"{' and source.roots' if self.declared_roots else ''}; remove the link or file, or list the folder "
                    f"that holds it in source.roots (e.g. roots: [{real.parent.as_posix()!r}])"
                )
            out.setdefault(real)
        return list(out)


class FilesSource(Source):
    capabilities = SourceCapabilities(incremental=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, FilesSourceConfig)
        self.cfg = pipeline.source
        self.root = project.root
        self.batch_size = batch_size
        self._fill = 0  # see read
        self._shift = 0  # see _end
        self.declared: dict[str, pa.DataType] | None = None
        if self.cfg.columns:
            self.declared = {}
            for k, v in self.cfg.columns.items():
                try:
                    self.declared[k] = parse_type(v)
                except ValueError as e:
                    raise ConfigError(f"pipeline {pipeline.name!r}: source.columns.{k}: {e}") from e
        if pipeline.target.mode == "append" and not self.cfg.file_column:
            raise ConfigError(
                f"pipeline {pipeline.name!r}: source.file_column: a files source in mode 'append' needs the "
                "file column to replace a changed file's rows; set it (default '_source_file')"
            )
        self.where = f"pipeline {pipeline.name!r}: source"
        self.scope = FileScope(project, self.cfg.path, self.cfg.roots, self.where)
        self.roots = self.scope.roots
        self.mode = pipeline.target.mode
        self._engine: Engine | None = None  # an icefield engine that reads and decodes the files itself (read_with)
        self._engine_reads = project.config.spark.read_sources
        self._engine_files: dict[int, tuple[str, str]] = {}  # ordinal -> (name, format) of the files it read
        self._frame: Frame | None = None  # the engine's records of those files, until the read ends
        self._records: dict[int, int] = {}  # ordinal -> records of the file, as the engine counted them
        self._engine_names: dict[str, list[str]] = {}  # the columns of each CSV or Parquet file it may read
        self._taken: list[Frame] = []  # the batches' frames: those a run did not get to are freed on close

    def read_with(self, engine: Engine) -> None:
        """Let ``engine`` read and decode the chosen files (:meth:`_engine_read`) when ``spark.read_sources`` is
        on; a merge target keeps the read here (the order of a key's rows within a batch is the source's)."""
        if self._engine_reads and self.mode != "merge":
            self._engine = engine

    def close(self) -> None:
        """Free the frames of batches the run did not get to (read ahead when it stopped); the others are freed
        already (releasing twice is a no-op)."""
        if self._engine is not None:
            for frame in self._taken:
                self._engine.release(frame)
        self._taken = []

    @classmethod
    def _decoder(cls, spec: _EngineSpec) -> FilesSource:
        """A source that only decodes (where an engine reads the files, :func:`decode_files_in_engine`): the
        decoders of the source of ``spec``, with the table's types, in chunks of :data:`_ENGINE_CHUNK` records."""
        dec = cls.__new__(cls)
        dec.cfg, dec.declared, dec._schema = spec.cfg, spec.declared, spec.schema
        dec.batch_size, dec._shift, dec._fill, dec._learned = _ENGINE_CHUNK, 0, 0, {}
        return dec

    def list_files(self) -> list[Path]:
        """The files the glob matches (see :meth:`FileScope.list_files`)."""
        return self.scope.list_files()

    def _name(self, real: Path, loaded: dict[str, str], partial: dict[str, Any] | None) -> str:
        """The name of the file ``real`` in positions and the file column: its path relative to the
        project, or, in a declared root, the root as written and the path inside it. A file a position
        already knows by its absolute path (the name files outside the project had before roots) keeps
        that name, so it is neither loaded again nor its rows orphaned."""
        name = real.as_posix()
        for prefix, folder in self.roots:
            if _within(real, folder):
                inside = real.relative_to(folder).as_posix()
                name = posixpath.join(prefix, inside) if prefix else inside
                break
        legacy = real.as_posix()

        def known(n: str) -> bool:
            return n in loaded or (partial is not None and partial.get("file") == n)

        return legacy if not known(name) and known(legacy) else name

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Batches of the new and changed files. With ``group_files``, the new files are read as one stream
        cut every ``batch_size`` records: a batch holds the end of one file and the start of the next while
        they have the same columns, so a drop of many files lands in as few snapshots as its records need,
        and one of large files is not cut at every file's end. A changed file is always replaced in
        batches of its own. When an engine reads the files (:meth:`read_with`), its records are freed once the
        read ends."""
        try:
            yield from self._batches(position, schema)
        finally:
            if self._frame is not None:  # the engine's records of the files, each batch's taken from it
                assert self._engine is not None
                self._engine.release(self._frame)
                self._frame = None

    def _batches(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """The batches of :meth:`read`: each file's, grouped (see there)."""
        group: list[SourceBatch] = []
        pieces: list[_Piece | None] = []  # for each batch of ``group``: the engine's records it holds, if any
        self._fill = 0  # records in ``group``: where the next new file's first batch ends
        for batch, groupable, piece in self._file_batches(position, schema):
            n = batch.rows_in if piece is None else piece.end - piece.start
            if groupable:
                if group and (self._fill + n > self.batch_size or not _same_shape(group[0], batch)):
                    yield self._emit(group, pieces)
                    group, pieces, self._fill = [], [], 0
                group.append(batch)
                pieces.append(piece)
                self._fill += n
                if self._fill >= self.batch_size:
                    yield self._emit(group, pieces)
                    group, pieces, self._fill = [], [], 0
                continue
            if group:
                yield self._emit(group, pieces)
                group, pieces, self._fill = [], [], 0
            yield self._emit([batch], [piece])
        if group:
            yield self._emit(group, pieces)

    def read_window(self, windows: list[Window], column: str, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Each window's rows (see :meth:`Source.read_window`): every file the glob matches is read whole,
        whatever the position, and its rows are kept in the window their ``column`` falls in. The rows of all
        the windows are held in memory until the files are read (pick a window size, or an interval, that
        fits). A file that cannot be read (removed, no permission) raises :class:`TransientError`: the window
        would otherwise be replaced without its rows."""
        self._fill = 0
        self._whole = True
        where = f"{self.where}: window.column"
        self._engine = None  # a window is read here, whole: the engine's read is for the new files of a regular run
        batches = (batch for batch, _, _ in self._file_batches(None, schema))
        yield from window_batches(batches, column, windows, where, self.cfg.path)

    def _unreadable(self, rel: str, reason: str) -> None:
        """A file that cannot be read: skipped by a regular run (its position makes the next run try it
        again), fatal to a window backfill (:meth:`read_window`)."""
        if getattr(self, "_whole", False):
            raise TransientError(
                f"{rel}: cannot be read ({reason}); a window backfill reads every file, or it would remove the rows this "
                "file holds in the window: rerun once the file can be read"
            )

    def _emit(self, group: list[SourceBatch], pieces: list[_Piece | None]) -> SourceBatch:
        """The batch of ``group``; when the engine read files of it, with the frame of their records (the engine's
        rows are decoded here again where a check may refuse them or the engine could not decode them:
        :meth:`_redecode`). Rows of the group read here (files the engine left to the run) stay in the batch's
        data until then, so the batches are cut as on the local engine."""
        batch = _grouped(group)
        held = [p for p in pieces if p is not None and p.end > p.start]
        if not held:
            return batch
        here = batch.data.num_rows
        local = (batch.data, batch.describe_rows(list(range(here)))) if here else None
        assert self._engine is not None and self._frame is not None
        # Whole files by ordinal (a batch may group thousands), the parts of files by their records.
        whole = [p.ordinal for p in held if p.start == 0 and p.end == self._records.get(p.ordinal)]
        terms = [f"({ENGINE_FILE} IN ({', '.join(map(str, whole))}) AND {ENGINE_RECORD} >= 0)"] if whole else []
        terms += [
            f"({ENGINE_FILE} = {p.ordinal} AND {ENGINE_RECORD} >= {p.start} AND {ENGINE_RECORD} < {p.end})"
            for p in held
            if p.ordinal not in whole
        ]
        batch.frame = self._engine.take(self._frame, " OR ".join(terms))
        self._taken.append(batch.frame)
        batch.describe = None
        batch.redecode = functools.partial(self._redecode, columns=batch.data.column_names, local=local)
        return batch

    def _plans(self, loaded: dict[str, str], partial: dict[str, Any] | None) -> Iterator[_Plan]:
        """The files to read, in name order, each with its snapshot (the bytes to read), the fingerprint it had
        when last loaded, the records to skip and whether it replaces rows loaded before. A file that cannot
        be read is skipped with a warning (the next run tries it again)."""
        for path in self.list_files():
            rel = self._name(path, loaded, partial)
            fmt = self._format_or_none(path)
            try:
                snap = _snapshot(path, text=fmt in ("csv", "jsonl"))
            except OSError as e:
                self._unreadable(rel, e.strerror or str(e))
                log.warning("%s: cannot be read (%s); skipped, the next run tries it again", rel, e.strerror or e)
                continue
            fp = snap.fp
            previous = loaded.get(rel)
            if previous == fp:
                continue
            skip = 0
            replace = previous is not None
            if partial is not None and partial.get("file") == rel:
                if partial.get("fp") == fp:
                    skip = int(partial["rows"])  # resume inside the file; its first chunk already replaced
                    replace = False
                else:
                    replace = True  # the file changed while it was half loaded: replace that half too
            yield _Plan(path, rel, fmt, snap, previous, skip, replace)
            partial = None

    def _file_batches(
        self, position: dict[str, Any] | None, schema: pa.Schema | None
    ) -> Iterator[tuple[SourceBatch, bool, _Piece | None]]:
        """Each file's batches, whether a batch may share a batch with others (``group_files``, and
        not the rows of a changed file), and the records of it the engine holds (None: read here). A groupable
        file's first chunk ends where the batch being filled is full (``read`` keeps ``self._fill``), its later
        ones every ``batch_size`` records."""
        state = position or {}
        loaded: dict[str, str] = dict(state.get("files", {}))
        partial: dict[str, Any] | None = state.get("partial")
        self._learned: dict[str, pa.DataType] = {}
        self._schema = schema
        plans: Iterator[_Plan] | list[_Plan] = self._plans(loaded, partial)
        ordinals: dict[str, int] = {}
        self._frame, self._records = None, {}
        # Spark decodes with the table's types: not before the table exists, nor while a declared column is not in
        # it yet (the run adds it).
        if self._engine is not None and schema is not None and set(self.declared or ()) <= set(schema.names):
            plans = list(plans)
            self._records, ordinals = self._engine_read(plans, schema)
        for plan in plans:
            rel, fp, previous, replace = plan.rel, plan.snap.fp, plan.previous, plan.replace
            ordinal = ordinals.get(rel)
            grouping = self.cfg.group_files and not replace
            self._shift = (self._fill if grouping else 0) - plan.skip
            chunks = _peekable(
                self._guarded_chunks(plan.path, rel, plan.skip, plan.snap)
                if ordinal is None
                else self._engine_chunks(plan, self._records.get(ordinal, 0))
            )
            try:
                for chunk in chunks:
                    data, raw, coords, rejected, start, end, describe, whole = chunk
                    if self.cfg.file_column:
                        data = data.append_column(self.cfg.file_column, constant(rel, data.num_rows, pa.string()))
                    last = chunks.exhausted()
                    if last:
                        loaded[rel] = fp
                        new_state: dict[str, Any] = {"files": dict(loaded)}
                    else:
                        new_state = {"files": dict(loaded), "partial": {"file": rel, "fp": fp, "rows": end}}
                    yield SourceBatch(
                        data=data,
                        position=new_state,
                        key=f"files:{rel}:{previous}->{fp}#{start}",
                        raw=raw,
                        coords=coords,
                        rejected=rejected,
                        replace_file=rel if replace else None,
                        coord_label=rel,
                        coord_offset=start,
                        # Records carry no schema of their own (JSON), or a file that could not be decoded
                        # tells nothing about the columns: a column absent here is not dropped.
                        open_schema=whole or plan.fmt == "jsonl",
                        describe=describe,
                    ), grouping, None if ordinal is None else _Piece(ordinal, start, end)
                    replace = False
            except _Unavailable as e:
                # Batches of the file already committed stay; its position makes the next run resume.
                self._unreadable(rel, str(e))
                log.warning("%s: cannot be read (%s); skipped, the next run tries it again", rel, e)

    # ------------------------------------------------------------------ reading in an engine

    def _engine_read(self, plans: list[_Plan], schema: pa.Schema) -> tuple[dict[int, int], dict[str, int]]:
        """Ask the engine to read and decode the files of ``plans`` it can (:meth:`_engine_can`) with this
        source's decoders and the table's types (:func:`decode_files_in_engine`); keeps the frame of their
        records (``self._frame``). Returns the records of each file read (by ordinal) and the ordinal of each
        file the engine read, by name. A file the engine could not decode whole as the source reads it (it
        changed since it was fingerprinted, it is not a readable file of its format) is left to the read here,
        and so is every file when the engine's read fails."""
        from icefield.errors import IcefieldError

        assert self._engine is not None
        chosen = [p for p in plans if self._engine_can(p, schema)]
        if not chosen:
            return {}, {}
        files = {_local_key(p.path): (i, p.rel, p.snap.size, p.snap.fp, p.fmt or "") for i, p in enumerate(chosen)}
        out = files_engine_schema(self._types(), self.cfg.file_column)
        spec = _EngineSpec(self.cfg, self.declared, schema, files)
        decode = functools.partial(decode_files_in_engine, spec=spec, out=out)
        try:
            frame, counts = self._engine.read_files(["file://" + k for k in files], decode, out, ENGINE_FILE)
        except IcefieldError as e:
            log.warning("the engine could not read the files (%s); they are read here", e)
            return {}, {}
        self._frame = frame
        failed = {-k - 1 for k in counts if k < 0}
        # Each file the engine read has a row of record -1; one it left out (Spark's reader skips names that start
        # with '_' or '.') has none: read here, never recorded as a file without records.
        read = {i for i in counts if i >= 0 and i not in failed}
        for i, p in enumerate(chosen):
            if i not in read:
                why = "could not decode it whole as this source does" if i in failed else "did not read it"
                log.info("%s: the engine %s; it is read here", p.rel, why)
        self._engine_files = {i: (p.rel, p.fmt or "") for i, p in enumerate(chosen) if i in read}
        records = {i: counts[i] - 1 for i in read}
        log.info("the engine read %d of %d files (%d records)", len(read), len(plans), sum(records.values()))
        return records, {chosen[i].rel: i for i in read}

    def _engine_can(self, plan: _Plan, schema: pa.Schema) -> bool:
        """Whether the engine may read the file of ``plan``: a CSV, Parquet or (without ``group_files``) JSON
        Lines file, small enough for one read, whose name needs no escaping, and (CSV, Parquet) whose columns
        are all the table's (a file with a column the table lacks changes the table: read here)."""
        fmt, path = plan.fmt, plan.path
        if fmt not in ("csv", "jsonl", "parquet") or plan.snap.size > _ENGINE_MAX_BYTES:
            return False
        if any(c in path.as_posix() for c in _ENGINE_UNSAFE):
            return False
        if fmt == "jsonl":
            return not self.cfg.group_files  # batches of grouped files are shaped by their records' keys
        try:
            if fmt == "csv":
                with _open_prefix(path, plan.snap.size) as raw:
                    text = io.TextIOWrapper(raw, encoding=_encoding_of(path), errors="replace", newline="")
                    header = next(csv.reader(text, delimiter=self.cfg.delimiter), None)
                if not header:
                    return False
                names = self._column_names(header)
            else:
                names = self._column_names(pq.read_schema(path).names)
        except (OSError, _Unreadable, UnicodeError, csv.Error, pa.ArrowException):
            return False
        self._engine_names[plan.rel] = names
        return set(names) <= set(schema.names)

    def _engine_chunks(self, plan: _Plan, records: int) -> Iterator[_Chunk]:
        """The chunks of a file the engine read (``records`` records), cut where :meth:`_chunks` cuts them: each
        holds no rows here (the engine holds them: :meth:`_emit`), only its columns (as a read here has them)."""
        types = self._types()
        if plan.fmt == "jsonl":
            empty = pa.table({})
        else:
            empty = pa.schema([pa.field(n, types[n]) for n in self._engine_names[plan.rel]]).empty_table()
        start = plan.skip
        while True:
            end = min(self._end(start), records) if records > start else start
            yield empty, None, None, [], start, end, None, False
            start = end
            if start >= records:
                return

    def _redecode(
        self, batch: SourceBatch, rows: pa.Table, columns: list[str], local: tuple[pa.Table, list[tuple[str, str]]] | None = None
    ) -> None:
        """Set ``batch``'s rows from the engine's rows ``rows`` (those a check may refuse, those it could not decode
        as the table is), as a read here would have them: JSON Lines records are decoded again from their bytes;
        CSV and Parquet records keep the engine's values of the files' ``columns`` (all the table's), and the
        ones it refused are quarantined with its reasons (its decoders are this source's). ``local``: rows of
        the batch read here, with their raw records and coordinates, which come first."""
        rows = rows.sort_by([(ENGINE_FILE, "ascending"), (ENGINE_RECORD, "ascending")])
        files = rows.column(ENGINE_FILE).to_pylist()
        coords = rows.column(ENGINE_COORDS).to_pylist()
        fmts = {self._engine_files[f][1] for f in set(files)}
        if fmts == {"jsonl"}:
            (rel,) = {self._engine_files[f][0] for f in set(files)}  # JSON Lines files are never grouped
            decoded: list[dict[str, Any]] = []
            raw: list[str] = []
            where: list[str] = []
            rejected: list[Rejected] = []
            for value, at in zip(rows.column(ENGINE_VALUE).to_pylist(), coords, strict=True):
                decode_json_line(value, at, decoded, raw, where, rejected)
            data, raw, where, rejected = self._rows_to_table(decoded, raw, where, rejected)
            if self.cfg.file_column:
                data = data.append_column(self.cfg.file_column, constant(rel, data.num_rows, pa.string()))
            batch.data, batch.raw, batch.coords = data, raw, where
            batch.rejected = [*batch.rejected, *rejected]
            return
        reasons = rows.column(ENGINE_REASON).to_pylist()
        keep = [i for i, r in enumerate(reasons) if r is None]
        texts = rows.column(ENGINE_RAW).to_pylist()
        checks, exact = rows.column(ENGINE_CHECK).to_pylist(), rows.column(ENGINE_RAW_BYTES).to_pylist()
        refused = [
            Rejected(texts[i] or "", coords[i], checks[i] or "decode", reasons[i], raw_bytes=exact[i])
            for i, r in enumerate(reasons)
            if r is not None
        ]
        own = [n for n in columns if n in rows.column_names]
        data = rows.take(pa.array(keep, pa.int64())).select(own)
        raw, where = [texts[i] or "" for i in keep], [coords[i] for i in keep]
        if local is not None:  # same columns (a batch groups files of one shape), typed here as the engine typed them
            first, described = local
            data = pa.concat_tables([first, data.select(first.column_names).cast(first.schema)])
            raw, where = [r for r, _ in described] + raw, [c for _, c in described] + where
        batch.data, batch.raw, batch.coords = data, raw, where
        batch.rejected = [*batch.rejected, *refused]

    def _guarded_chunks(self, path: Path, rel: str, skip: int, snap: _Snapshot) -> Iterator[_Chunk]:
        """The chunks of :meth:`_chunks` (each with ``whole=False``). A file that cannot be read (removed,
        no permission: not its content's fault) raises :class:`_Unavailable`; a file (or its rest) that
        cannot be decoded ends with one chunk holding one ``decode`` row (``whole=True``) for the
        quarantine, so it never stops the run."""
        at = skip
        try:
            for chunk in self._chunks(path, rel, skip, snap):
                at = chunk[5]
                yield (*chunk, False)
            return
        except OSError as e:
            raise _Unavailable(e.strerror or str(e)) from None
        except (_Unreadable, UnicodeError, csv.Error, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            reason = str(e) if isinstance(e, _Unreadable) else f"{type(e).__name__}: {e}"
        what = "the whole file" if at == 0 else f"the file from record {at + 1} on"
        log.warning("%s: %s; %s goes to the quarantine", rel, reason, what)
        raw, exact = _head(path)
        row = Rejected(raw, rel if at == 0 else f"{rel}:record {at + 1}+", "decode", f"decode: {reason}; {what} is quarantined", raw_bytes=exact)
        yield pa.table({}), None, None, [row], at, at + 1, None, True

    # ------------------------------------------------------------------ decoding

    def _format_or_none(self, path: Path) -> str | None:
        if self.cfg.format != "auto":
            return self.cfg.format
        return _FORMATS.get(path.suffix.lower())

    def _format(self, path: Path) -> str:
        fmt = self._format_or_none(path)
        if fmt is None:
            raise _Unreadable(
                f"cannot tell the format of {path.name!r} from its extension; name it .csv, .jsonl or .parquet, "
                "or set source.format to csv, jsonl or parquet"
            )
        return fmt

    def _types(self) -> dict[str, pa.DataType]:
        """Column types to decode with: the table's, then types learned from earlier chunks of this run
        (so one file's chunks agree), then the declared ones, which win."""
        types: dict[str, pa.DataType] = {}
        if self._schema is not None:
            types.update({f.name: f.type for f in self._schema})
        types.update(self._learned)
        if self.declared:
            types.update(self.declared)
        return types

    def _learn(self, table: pa.Table) -> None:
        for f in table.schema:
            self._learned.setdefault(f.name, f.type)

    def _end(self, start: int) -> int:
        """Where the chunk that starts at record ``start`` of the file being read ends (exclusive): at the
        next multiple of ``batch_size`` records counted from ``self._shift`` (at most ``batch_size`` later)."""
        return start + self.batch_size - (start + self._shift) % self.batch_size

    def _chunks(self, path: Path, rel: str, skip: int, snap: _Snapshot) -> Iterator[Chunk]:
        """Decoded chunks of at most ``batch_size`` source records of the file's first ``snap.size`` bytes,
        after the first ``skip`` records, cut where ``_end`` says."""
        fmt = self._format(path)
        if fmt == "jsonl":
            yield from self._jsonl_chunks(path, rel, skip, snap.size)
        elif fmt == "csv":
            yield from self._csv_chunks(path, rel, skip, snap.size)
        else:
            yield from self._parquet_chunks(path, rel, skip)

    def _jsonl_chunks(self, path: Path, rel: str, skip: int, size: int) -> Iterator[Chunk]:
        rows: list[dict[str, Any]] = []
        raw: list[str] = []
        coords: list[str] = []
        rejected: list[Rejected] = []
        record = 0  # non-blank lines seen
        start = skip
        with _open_prefix(path, size) as f:
            for lineno, line_bytes in enumerate(f, start=1):
                if lineno == 1:
                    # JSON Lines is UTF-8; its byte order mark is no part of the first record. (Other bytes
                    # that are not UTF-8, a UTF-16 mark included, are a record's problem, kept exactly.)
                    line_bytes = line_bytes.removeprefix(codecs.BOM_UTF8)
                if not line_bytes.strip():
                    continue
                record += 1
                if record <= skip:
                    continue
                decode_json_line(line_bytes, f"{rel}:{lineno}", rows, raw, coords, rejected)
                if record >= self._end(start):
                    yield (*self._rows_to_table(rows, raw, coords, rejected), start, record, None)
                    rows, raw, coords, rejected = [], [], [], []
                    start = record
        if rows or rejected or start == skip:
            yield (*self._rows_to_table(rows, raw, coords, rejected), start, record, None)

    def _rows_to_table(
        self,
        rows: list[dict[str, Any]],
        raw: list[str],
        coords: list[str],
        rejected: list[Rejected],
    ) -> tuple[pa.Table, list[str], list[str], list[Rejected]]:
        fc = self.cfg.file_column
        if fc and any(fc in r for r in rows):
            # The file column is icefield's to fill: a record that has a key of that name is refused whole.
            keep = [i for i, r in enumerate(rows) if fc not in r]
            for i in sorted(set(range(len(rows))) - set(keep)):
                rejected.append(Rejected(raw[i], coords[i], "decode", f"decode: {_file_column_clash(fc, 'key')}"))
            rows, raw, coords = [rows[i] for i in keep], [raw[i] for i in keep], [coords[i] for i in keep]
        table, bad = records_to_table(rows, self._types(), self.declared or ())
        self._learn(table)
        return split_bad(table, raw, coords, rejected, bad)

    def _csv_chunks(self, path: Path, rel: str, skip: int, size: int) -> Iterator[Chunk]:
        """Chunks of at most ``batch_size`` CSV records (the position counts records, good or not).

        Fields are read as bytes and typed strictly, so that no value can fail the file: a field that is
        not UTF-8 or does not fit its type, or a record with the wrong number of fields, is rejected with
        its coordinates. Arrow's reader does the work; a file it cannot parse (broken quoting, a short
        record that is not UTF-8) is read on, from the first record not yet handed out, by Python's csv
        module, which counts records the same way.
        """
        encoding = _encoding_of(path)
        with _open_prefix(path, size) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")
            header = next(csv.reader(text, delimiter=self.cfg.delimiter), None)
        if not header:
            yield pa.table({}), [], [], [], skip, skip, None
            return
        names = self._column_names(header)
        cursor = _CsvCursor(skip)
        block = _CSV_BLOCK
        while True:
            try:
                yield from self._csv_arrow(path, rel, names, cursor, block, size, encoding)
                return
            except pa.ArrowInvalid as e:
                if "straddl" in str(e) and block < _MAX_CSV_BLOCK:
                    block *= 8  # a record longer than a block: read on with bigger blocks
                    continue
                log.info("%s: %s; reading on from record %d with the tolerant CSV reader", rel, e, cursor.next + 1)
                yield from self._csv_tolerant(path, rel, names, cursor, size, encoding)
                return

    def _column_names(self, header: list[str]) -> list[str]:
        """The column names of a file's header, made usable: an empty name becomes ``column_<position>``
        (1-based) and a repeated one ``<name>_<n>`` (n = 2, 3... the next name not taken). A name in icefield's
        reserved namespace, or the file column's name, fails the file (:class:`_Unreadable`)."""
        for name in header:
            if name and (problem := column_name_problem(name)) is not None:
                raise _Unreadable(f"column {name!r} {problem}; rename it in the file")
            if name and name == self.cfg.file_column:
                raise _Unreadable(_file_column_clash(name, "column"))
        taken = set(header)
        out: list[str] = []
        seen: set[str] = set()
        for i, name in enumerate(header):
            new = name or f"column_{i + 1}"
            if new in seen or (not name and new in taken):
                base, n = new, 2
                while f"{base}_{n}" in taken or f"{base}_{n}" in seen:
                    n += 1
                new = f"{base}_{n}"
            if new != name:
                log.info("column %d of the header, %r, is read as %r", i + 1, name, new)
            seen.add(new)
            out.append(new)
        return out

    def _csv_arrow(
        self, path: Path, rel: str, names: list[str], cursor: _CsvCursor, block: int, size: int, encoding: str
    ) -> Iterator[Chunk]:
        # Records of the wrong shape: the index of each (all of them: they place the good records), and
        # the text and field count of those not handed out yet.
        bad_at: list[int] = []
        invalid: dict[int, tuple[str, int]] = {}

        def on_invalid(row: Any) -> str:
            rec = row.number - 2  # ``number`` counts the header as 1
            bad_at.append(rec)
            if rec >= cursor.next:
                invalid[rec] = (row.text, row.actual_columns)
            return "skip"

        quiet = _arrow_handler_errors_kept_quiet(on_invalid)
        with _open_prefix(path, size) as source:
            with quiet:  # Arrow parses the first block when it opens the file
                reader = pacsv.open_csv(
                    source,
                    # One thread: Arrow reports the number of a bad record only when it reads in order. The
                    # header's names are replaced by the usable ones (see _column_names); record numbers
                    # still count the header line.
                    read_options=pacsv.ReadOptions(
                        use_threads=False, block_size=block, column_names=names, skip_rows=1,
                        encoding="utf8" if encoding.startswith("utf-8") else encoding,
                    ),
                    parse_options=pacsv.ParseOptions(
                        delimiter=self.cfg.delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
                    ),
                    convert_options=pacsv.ConvertOptions(
                        column_types=dict.fromkeys(names, pa.binary()), strings_can_be_null=True, null_values=_CSV_NULLS
                    ),
                )
            seen = 0  # valid records read so far
            pending = _Pending(names)
            while True:
                try:
                    with quiet:
                        rb = reader.read_next_batch()
                except StopIteration:
                    break
                bad_at.sort()
                rec = _record_indices(seen, rb.num_rows, bad_at)
                seen += rb.num_rows
                first = bisect.bisect_left(rec, cursor.next)
                pending.add(pa.Table.from_batches([rb]).slice(first), rec[first:])
                while pending.last() >= self._end(cursor.next):
                    yield self._csv_take(pending, invalid, rel, cursor, self._end(cursor.next))
        total = max([cursor.next, pending.last() + 1] + [r + 1 for r in invalid])
        while cursor.next < total or not cursor.emitted:
            yield self._csv_take(pending, invalid, rel, cursor, min(self._end(cursor.next), total))

    def _csv_take(self, pending: _Pending, invalid: dict[int, tuple[str, int]], rel: str, cursor: _CsvCursor, end: int) -> Chunk:
        """The chunk of records ``cursor.next`` to ``end``, cut off the pending ones."""
        start = cursor.next
        strings, recs = pending.take(end)
        short: list[_Short] = []
        for r in sorted(r for r in invalid if r < end):
            text, got = invalid.pop(r)
            short.append((r, text, None, got))
        cursor.next, cursor.emitted = end, True
        return self._csv_chunk(strings, recs, short, rel, start, end)

    def _csv_tolerant(
        self, path: Path, rel: str, names: list[str], cursor: _CsvCursor, size: int, encoding: str
    ) -> Iterator[Chunk]:
        if not encoding.startswith("utf-8"):
            raise _Unreadable(f"not a readable {encoding.upper()} CSV file; fix the file or set source.delimiter")
        limit = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)
        try:
            with _open_prefix(path, size) as raw:
                text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
                records = csv.reader(text, delimiter=self.cfg.delimiter)
                next(records, None)
                rec = -1
                rows: list[list[str]] = []
                recs: list[int] = []
                short: list[_Short] = []
                for fields in records:
                    if not fields:
                        continue  # a blank line is no record (nor is it for Arrow's reader)
                    rec += 1
                    if rec < cursor.next:
                        continue
                    if len(fields) == len(names):
                        rows.append(fields)
                        recs.append(rec)
                    else:
                        line = _csv_line(fields, self.cfg.delimiter)
                        short.append((rec, line.decode("utf-8", "backslashreplace"), None if _is_utf8(line) else line, len(fields)))
                    if rec + 1 >= self._end(cursor.next):
                        yield self._csv_rows_chunk(rows, recs, short, names, rel, cursor, rec + 1)
                        rows, recs, short = [], [], []
                if rows or short or not cursor.emitted or rec + 1 > cursor.next:
                    yield self._csv_rows_chunk(rows, recs, short, names, rel, cursor, max(rec + 1, cursor.next))
        except csv.Error as e:
            raise _Unreadable(f"not a readable CSV file: {e}; fix the file or set source.delimiter") from None
        finally:
            csv.field_size_limit(limit)

    def _csv_rows_chunk(
        self,
        rows: list[list[str]],
        recs: list[int],
        short: list[_Short],
        names: list[str],
        rel: str,
        cursor: _CsvCursor,
        end: int,
    ) -> Chunk:
        cols = {
            name: pa.array([None if r[j] in _CSV_NULL_SET else r[j].encode("utf-8", "surrogateescape") for r in rows], pa.binary())
            for j, name in enumerate(names)
        }
        start = cursor.next
        cursor.next, cursor.emitted = end, True
        return self._csv_chunk(pa.table(cols), recs, short, rel, start, end)

    def _csv_chunk(self, strings: pa.Table, recs: list[int], short: list[_Short], rel: str, start: int, end: int) -> Chunk:
        """Type the fields (bytes) of a chunk's well-formed records; reject the others."""
        types = self._types()
        bad: dict[int, str] = {}
        cols: dict[str, pa.Array] = {}
        for name in strings.column_names:
            if strings.num_rows == 0:
                # No value to type: the known type, or no column at all (as a file without records has
                # none), so that no schema change is implied and no table is created with an untyped column.
                if name in types:
                    cols[name] = pa.array([], types[name])
                continue
            text = _utf8_column(name, strings.column(name), bad)
            t = types.get(name) or _infer_csv_type(text)
            cols[name] = cast_column(name, text, t, bad)
        table = pa.table(cols) if cols else pa.table({"_": pa.nulls(strings.num_rows)}).drop(["_"])
        if strings.num_rows:
            self._learn(table)
        delimiter = self.cfg.delimiter
        typed, rejected, describe = _split_bad_lazy(
            table, strings, bad, lambda i: f"{rel}:row {recs[i] + 1}", lambda row: _csv_raw(row, delimiter)
        )
        for r, text, exact, got in short:
            reason = f"decode: expected {strings.num_columns} fields, got {got}"
            rejected.append(Rejected(text, f"{rel}:row {r + 1}", "decode", reason, raw_bytes=exact))
        return typed, None, None, rejected, start, end, describe

    def _parquet_chunks(self, path: Path, rel: str, skip: int) -> Iterator[Chunk]:
        try:
            pf = pq.ParquetFile(path)
            names = self._column_names(pf.schema_arrow.names)
            batches = rebatch(pf.iter_batches(batch_size=self.batch_size), self.batch_size, skip, first=self._end(skip) - skip)
            emitted = False
            for start, table in batches:
                emitted = True
                typed, rejected, describe = self._type_parquet(table.rename_columns(names), rel, start)
                yield typed, None, None, rejected, start, start + table.num_rows, describe
            if not emitted:
                typed, _, _ = self._type_parquet(pf.schema_arrow.empty_table().rename_columns(names), rel, skip)
                yield typed, [], [], [], skip, skip, None
        except (FileNotFoundError, PermissionError):
            raise
        except (pa.ArrowInvalid, OSError) as e:  # Arrow reports a corrupt file as an OSError too
            raise _Unreadable(f"not a readable Parquet file: {e}") from None

    def _type_parquet(self, table: pa.Table, rel: str, start: int) -> tuple[pa.Table, list[Rejected], Describe]:
        types = self._types()
        bad: dict[int, str] = {}
        cols = {
            name: cast_column(name, table.column(name), types[name], bad) if name in types else table.column(name).combine_chunks()
            for name in table.column_names
            # A column of no type (all nulls, Arrow's null type) and of no known type is left out: there
            # is no value to type it by, and a table cannot have an untyped column.
            if name in types or not pa.types.is_null(table.schema.field(name).type)
        }
        typed = pa.table(cols) if cols else pa.table({"_": pa.nulls(table.num_rows)}).drop(["_"])
        self._learn(typed)
        return _split_bad_lazy(typed, table, bad, lambda i: f"{rel}#{start + i}")


# (rows, raw records, coordinates, rejected records, first record, end record, describe): columnar
# formats keep no raw text per good row; ``describe`` makes it for the rows a check sends to quarantine.
Chunk = tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected], int, int, Describe | None]
# A chunk and whether it is the quarantine row of a file (or its rest) that could not be decoded.
_Chunk = tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected], int, int, Describe | None, bool]


@dataclass(frozen=True)
class _Plan:
    """A file to read: its path and name, its format (None: unknown), the bytes to read (``snap``), its
    fingerprint when last loaded (None: a new file), the records already loaded, whether it replaces rows."""

    path: Path
    rel: str
    fmt: str | None
    snap: _Snapshot
    previous: str | None
    skip: int
    replace: bool


@dataclass(frozen=True)
class _Piece:
    """Records ``start`` to ``end`` (exclusive) of the file the engine read as ``ordinal``."""

    ordinal: int
    start: int
    end: int


# ------------------------------------------------------------------------------------ decoding in an engine

ENGINE_FILE, ENGINE_RECORD, ENGINE_VALUE, ENGINE_RAW, ENGINE_COORDS, ENGINE_CHECK, ENGINE_REASON, ENGINE_RAW_BYTES = (
    "__icefield_file", "__icefield_record", "__icefield_value", "__icefield_raw", "__icefield_coords",
    "__icefield_check", "__icefield_reason", "__icefield_raw_bytes",
)
"""The columns a frame of file records keeps besides the table's: the file (its ordinal in the read; a negative
one, ``-ordinal - 1``, marks a file the engine could not decode whole), the record's index in it (-1: the row
that tells the file was read), the record's
bytes (JSON Lines), its raw form and coordinates for the quarantine, and the check and reason that refused it."""
_ENGINE_CHUNK = 65536
"""Records an engine's worker decodes at a time."""
_ENGINE_MAX_BYTES = 1 << 30
"""Bigger files are read here: an engine reads a file whole, as one value."""
_ENGINE_UNSAFE = frozenset("*?[]{}\\:,")
"""Characters of a path an engine's reader would take for a glob or a URI's parts: such files are read here."""


@dataclass(frozen=True)
class _EngineSpec:
    """What an engine's workers need to decode the files as the source does (:func:`decode_files_in_engine`):
    the source's settings, its declared types, the table's schema, and the files by local path: (ordinal,
    name, bytes to read, their fingerprint, format)."""

    cfg: FilesSourceConfig
    declared: dict[str, pa.DataType] | None
    schema: pa.Schema
    files: dict[str, tuple[int, str, int, str, str]]


def _local_key(path: Path) -> str:
    return path.as_posix()


def files_engine_schema(types: dict[str, pa.DataType], file_column: str | None) -> pa.Schema:
    """The Arrow schema of a frame of decoded file records: the columns ``types`` (as an engine takes them), the
    file column, the mark of the rows to decode again here (:data:`icefield.engines.base.SUSPECT_COLUMN`) and
    the columns :data:`ENGINE_FILE` ... :data:`ENGINE_RAW_BYTES`."""
    from icefield.engines.base import SUSPECT_COLUMN
    from icefield.ingest.kafka import _plain

    fields = [pa.field(n, _plain(t)) for n, t in types.items()]
    if file_column and file_column not in types:
        fields.append(pa.field(file_column, pa.string()))
    return pa.schema([
        *fields,
        pa.field(SUSPECT_COLUMN, pa.bool_()),
        pa.field(ENGINE_FILE, pa.int64()),
        pa.field(ENGINE_RECORD, pa.int64()),
        pa.field(ENGINE_VALUE, pa.binary()),
        pa.field(ENGINE_RAW, pa.string()),
        pa.field(ENGINE_COORDS, pa.string()),
        pa.field(ENGINE_CHECK, pa.string()),
        pa.field(ENGINE_REASON, pa.string()),
        pa.field(ENGINE_RAW_BYTES, pa.binary()),
    ])


def decode_files_in_engine(batches: Iterator[pa.RecordBatch], spec: _EngineSpec, out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Decode files (Arrow batches of ``path``, as the engine names it, and ``content``) where an engine reads
    them (Spark's Python workers), with the source's own decoders and the table's types: the first bytes the
    source fingerprinted, one row per record (typed as ``out``), after one row of record -1 that tells the file
    was read.

    A JSON Lines record that decodes to a row of the table's columns is a row; any other (not JSON, a bad value,
    a key the table does not have) is marked (:data:`icefield.engines.base.SUSPECT_COLUMN`) with its bytes, for
    the source to decode again where the run is (:meth:`FilesSource._redecode`). A CSV or Parquet record is a
    row typed as the source types it, or a marked row with the check and reason the source's decoder refused it
    with. A file whose bytes are not the ones fingerprinted, or that cannot be decoded whole (the source would
    quarantine it, or the rest of it, as one record), is one row of file ``-ordinal - 1``: the source reads it
    itself."""
    import tempfile

    dec = FilesSource._decoder(spec)
    for rb in batches:
        for uri, content in zip(rb.column("path").to_pylist(), rb.column("content").to_pylist(), strict=True):
            ordinal, rel, size, fp, fmt = spec.files["/" + uri.removeprefix("file:").lstrip("/")]
            data = content[:size]
            yield _engine_batch(out, dec.cfg.file_column, rel, ordinal, [-1], [None], None, suspect=[True])  # read
            if f"{len(data)}:{hashlib.sha256(data).hexdigest()}" != fp:
                yield _engine_batch(out, dec.cfg.file_column, rel, -ordinal - 1, [-1], [None], None, suspect=[True])
                continue
            try:
                if fmt == "jsonl":
                    yield from _jsonl_in_engine(dec, data, ordinal, rel, out)
                else:
                    with tempfile.TemporaryDirectory(prefix="icefield-") as tmp:
                        path = Path(tmp) / f"file.{fmt}"
                        path.write_bytes(data)
                        yield from _typed_in_engine(dec, path, fmt, ordinal, rel, size, out)
            except (_Unreadable, UnicodeError, csv.Error, pa.ArrowException, OSError):
                yield _engine_batch(out, dec.cfg.file_column, rel, -ordinal - 1, [-1], [None], None, suspect=[True])


def _jsonl_in_engine(dec: FilesSource, data: bytes, ordinal: int, rel: str, out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The records of a JSON Lines file (as :meth:`FilesSource._jsonl_chunks` reads them), a batch per chunk."""
    types = dec._types()
    known = set(types)
    fc = dec.cfg.file_column
    recs: list[int] = []
    values: list[bytes] = []
    where: list[str] = []
    objs: list[dict[str, Any] | None] = []
    record = 0

    def batch() -> pa.RecordBatch:
        good = [i for i, o in enumerate(objs) if o is not None]
        table, bad = records_to_table([o for o in objs if o is not None], types, dec.declared or ())
        take: list[int | None] = [None] * len(objs)
        for k, i in enumerate(good):
            if k not in bad:
                take[i] = k
        return _engine_batch(out, fc, rel, ordinal, recs, take, table, suspect=[t is None for t in take], values=values, coords=where)

    for lineno, line in enumerate(io.BytesIO(data), start=1):
        if lineno == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            continue
        rows: list[dict[str, Any]] = []
        decode_json_line(line, f"{rel}:{lineno}", rows, [], [], [])
        obj = rows[0] if rows else None
        if obj is not None and (not set(obj) <= known or (fc and fc in obj)):
            obj = None  # a key the table lacks, or the file column's: decoded again where the run is
        recs.append(record)
        values.append(line)
        where.append(f"{rel}:{lineno}")
        objs.append(obj)
        record += 1
        if len(recs) >= _ENGINE_CHUNK:
            yield batch()
            recs, values, where, objs = [], [], [], []
    if recs:
        yield batch()


def _typed_in_engine(dec: FilesSource, path: Path, fmt: str, ordinal: int, rel: str, size: int, out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The records of a CSV or Parquet file (as :meth:`FilesSource._chunks` decodes them), a batch per chunk:
    the typed rows, then the refused records."""
    chunks = dec._csv_chunks(path, rel, 0, size) if fmt == "csv" else dec._parquet_chunks(path, rel, 0)
    mark = ":row " if fmt == "csv" else "#"
    shift = 1 if fmt == "csv" else 0
    for typed, _, _, rejected, _, _, describe in chunks:
        n = typed.num_rows
        pairs = describe(list(range(n))) if describe is not None and n else []
        refused = len(rejected)
        coords = [c for _, c in pairs] + [r.coords for r in rejected]
        yield _engine_batch(
            out, dec.cfg.file_column, rel, ordinal,
            [int(c.rsplit(mark, 1)[1]) - shift for c in coords],
            [*range(n), *[None] * refused],
            typed,
            suspect=[False] * n + [True] * refused,
            raws=[r for r, _ in pairs] + [r.raw for r in rejected],
            coords=coords,
            checks=[*[None] * n, *[r.check for r in rejected]],
            reasons=[*[None] * n, *[r.reason for r in rejected]],
            exact=[*[None] * n, *[r.raw_bytes for r in rejected]],
        )


def _engine_batch(
    out: pa.Schema, fc: str | None, rel: str, ordinal: int, recs: list[int], take: list[int | None], typed: pa.Table | None,
    *, suspect: list[bool], values: list[bytes] | None = None, raws: list[str] | None = None, coords: list[str] | None = None,
    checks: Sequence[str | None] | None = None, reasons: Sequence[str | None] | None = None,
    exact: Sequence[bytes | None] | None = None,
) -> pa.RecordBatch:
    """One batch of ``out``: row i holds row ``take[i]`` of ``typed`` (None: nulls) and the given columns."""
    from icefield.engines.base import SUSPECT_COLUMN

    n = len(recs)
    extra: dict[str, Any] = {
        SUSPECT_COLUMN: suspect, ENGINE_FILE: [ordinal] * n, ENGINE_RECORD: recs, ENGINE_VALUE: values, ENGINE_RAW: raws,
        ENGINE_COORDS: coords, ENGINE_CHECK: checks, ENGINE_REASON: reasons, ENGINE_RAW_BYTES: exact,
    }
    index = pa.array(take, pa.int64())
    columns: list[pa.Array] = []
    for f in out:
        if f.name in extra:
            v = extra[f.name]
            columns.append(pa.nulls(n, f.type) if v is None else pa.array(v, f.type))
        elif f.name == fc:
            columns.append(pa.array([rel] * n, f.type))
        elif typed is not None and f.name in typed.column_names:
            col = typed.column(f.name).take(index).cast(f.type)
            columns.append(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
        else:
            columns.append(pa.nulls(n, f.type))
    return pa.RecordBatch.from_arrays(columns, schema=out)


class _peekable:
    """An iterator that can tell whether another item follows the one just returned."""

    def __init__(self, it: Iterator[_Chunk]) -> None:
        self._it = it
        self._next: list[_Chunk] = []

    def __iter__(self) -> _peekable:
        return self

    def __next__(self) -> _Chunk:
        if self._next:
            return self._next.pop()
        return next(self._it)

    def exhausted(self) -> bool:
        if self._next:
            return False
        try:
            self._next.append(next(self._it))
        except StopIteration:
            return True
        return False


class _Unavailable(Exception):
    """The file cannot be read now (removed since it was listed, no permission...)."""


def _within(path: Path, folder: Path) -> bool:
    return path.is_relative_to(folder)


def _fixed_parts(parts: tuple[str, ...]) -> list[str]:
    """The components of a glob before the first one with a wildcard (the glob's fixed folder)."""
    out: list[str] = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        out.append(part)
    return out


def _icefield_paths(project: Project) -> list[Path]:
    """icefield's own files and folders in the project, which a files source never reads: the state folder
    (``.icefield/``: the default catalog, the warehouse by default), a local warehouse elsewhere, and a
    SQLite catalog database elsewhere (with its journal files)."""
    paths = [project.state_dir.resolve()]
    warehouse = project.warehouse_path()
    if warehouse is not None:
        paths.append(warehouse)
    uri = project.catalog_uri()
    if not has_reference(uri):
        from icefield.catalog import sqlite_path

        if (db := sqlite_path(uri, project.root)) is not None:
            db = db.resolve()
            paths.extend(db.with_name(db.name + suffix) for suffix in ("", "-wal", "-shm", "-journal"))
    return paths


def _file_column_clash(name: str, what: str) -> str:
    return (
        f"{what} {name!r} has the name of the file column (source.file_column), which icefield fills with the "
        "file's name; rename it in the file, or set source.file_column to another name"
    )


def _head(path: Path) -> tuple[str, bytes | None]:
    """The start of a file for its whole-file quarantine row: text, and the exact bytes when not UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(_HEAD_BYTES)
    except OSError:
        return "", None
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", "backslashreplace"), data


_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]  # UTF-32 LE starts like UTF-16 LE


def _encoding_of(path: Path) -> str:
    """The text encoding of a CSV file by its byte order mark: ``utf-8-sig`` (a UTF-8 BOM), ``utf-16``,
    ``utf-32``, else ``utf-8``."""
    with path.open("rb") as f:
        start = f.read(4)
    return next((enc for bom, enc in _BOMS if start.startswith(bom)), "utf-8")


class _Prefix(io.RawIOBase):
    """The first ``size`` bytes of a file, as a file."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])  # type: ignore[attr-defined]
        self._left -= got or 0
        return got or 0

    def close(self) -> None:
        self._f.close()
        super().close()


@contextlib.contextmanager
def _open_prefix(path: Path, size: int) -> Iterator[IO[bytes]]:
    """The first ``size`` bytes of a file (the bytes a snapshot fingerprinted), open for reading."""
    with io.BufferedReader(_Prefix(path.open("rb", buffering=0), size), buffer_size=1 << 20) as f:
        yield f


def _same_shape(a: SourceBatch, b: SourceBatch) -> bool:
    return a.data.schema.equals(b.data.schema) and a.open_schema == b.open_schema


def _grouped(group: list[SourceBatch]) -> SourceBatch:
    """One batch of the whole new files in ``group`` (same columns), committed together: its position is
    the last one's (which lists them all), its key names them all, and each row keeps its file's
    coordinates and raw record for the quarantine."""
    if len(group) == 1:
        return group[0]
    starts: list[int] = []
    total = 0
    for b in group:
        starts.append(total)
        total += b.data.num_rows

    def describe(indices: list[int]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for i in indices:
            k = bisect.bisect_right(starts, i) - 1
            out.extend(group[k].describe_rows([i - starts[k]]))
        return out

    digest = hashlib.sha256("\n".join(b.key for b in group).encode()).hexdigest()[:32]
    return SourceBatch(
        data=pa.concat_tables([b.data for b in group]),
        position=group[-1].position,
        key=f"files:{len(group)} new files:{digest}",
        rejected=[r for b in group for r in b.rejected],
        coord_label=group[0].coord_label,
        filtered=sum(b.filtered for b in group),
        open_schema=group[0].open_schema,
        describe=describe,
    )


def decode_json_line(
    line_bytes: bytes, where: str, rows: list[dict[str, Any]], raw: list[str], coords: list[str], rejected: list[Rejected]
) -> None:
    """Decode one JSON Lines record (or one message) into ``rows``/``raw``/``coords``, or into ``rejected``
    when it is not UTF-8, not valid JSON (NaN and Infinity included) or not a JSON object."""
    try:
        line = line_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        exact = line_bytes.rstrip(b"\r\n")
        text = exact.decode("utf-8", errors="backslashreplace")
        rejected.append(Rejected(text, where, "decode", f"decode: invalid UTF-8 at byte {e.start}", raw_bytes=exact))
        return
    line = line.rstrip("\r\n")
    try:
        rec = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        rejected.append(Rejected(line, where, "decode", f"decode: not valid JSON: {e}"))
        return
    if not isinstance(rec, dict):
        rejected.append(Rejected(line, where, "decode", f"decode: a JSON object is expected, got {type(rec).__name__}"))
        return
    rows.append(rec)
    raw.append(line)
    coords.append(where)


# Only explicit null markers: "NaN", "NA" or "N/A" stay text (a NaN is refused by a number column, and
# "NA" is a country code), never a silent null.
_CSV_NULLS = ["", "NULL", "null", "\\N"]
_CSV_NULL_SET = frozenset(_CSV_NULLS)
# Arrow reads a CSV file in blocks that must hold whole records; one thread reads as fast with big
# blocks as with small ones, so start big enough for most records and grow on a longer one.
_CSV_BLOCK = 16 << 20
_MAX_CSV_BLOCK = 1 << 30


class _CsvCursor:
    """Where a CSV file's reading stands: the record index the next chunk starts at, and whether a
    chunk was handed out (each file gives at least one, so that it is recorded as loaded)."""

    def __init__(self, start: int) -> None:
        self.next = start
        self.emitted = False


class _Pending:
    """Well-formed CSV records read but not yet handed out: their fields (bytes) and record indices."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.tables: list[pa.Table] = []
        self.recs: list[int] = []

    def add(self, table: pa.Table, recs: list[int]) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.recs.extend(recs)

    def last(self) -> int:
        """The record index of the last pending record (-1 if none)."""
        return self.recs[-1] if self.recs else -1

    def take(self, end: int) -> tuple[pa.Table, list[int]]:
        """Remove and return the pending records before record index ``end``."""
        if not self.tables:
            return pa.table({n: pa.array([], pa.binary()) for n in self.names}), []
        whole = pa.concat_tables(self.tables)
        n = bisect.bisect_left(self.recs, end)
        taken, self.recs = self.recs[:n], self.recs[n:]
        self.tables = [whole.slice(n)] if n < whole.num_rows else []
        return whole.slice(0, n), taken


def _record_indices(first: int, n: int, bad: list[int]) -> list[int]:
    """The record indices of the valid records ``first`` .. ``first + n - 1`` of a file whose bad records
    are at the sorted record indices ``bad``: the k-th valid record is record k plus the bad ones before it."""
    ranks = [r - i for i, r in enumerate(bad)]  # valid records before each bad one
    out: list[int] = []
    k, end = first, first + n
    while k < end:
        j = bisect.bisect_right(ranks, k)  # bad records before valid record k
        stop = min(ranks[j], end) if j < len(ranks) else end
        out.extend(range(k + j, stop + j))
        k = stop
    return out


class _arrow_handler_errors_kept_quiet:
    """Arrow decodes a short record's text before it calls the invalid-row handler; when that text is not
    UTF-8 the decoding fails inside Arrow, which reports it to ``sys.unraisablehook`` and then fails the
    read (the file is read on by the tolerant reader). Keeps that one report, and only it, quiet while
    Arrow reads (reusable: enter it around each read)."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self.previous: Callable[[Any], Any] = sys.unraisablehook

    def _hook(self, unraisable: Any) -> None:
        if unraisable.object is self.handler and isinstance(unraisable.exc_value, UnicodeDecodeError):
            return
        self.previous(unraisable)

    def __enter__(self) -> None:
        self.previous = sys.unraisablehook
        sys.unraisablehook = self._hook

    def __exit__(self, *exc: object) -> None:
        sys.unraisablehook = self.previous


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_column(name: str, col: pa.ChunkedArray | pa.Array, bad: dict[int, str]) -> pa.Array:
    """A column of bytes as text; values that are not UTF-8 become null and their rows bad."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    invalid = _not_utf8(col, 0)
    for i in invalid:
        value = col[i].as_py()
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.setdefault(i, f"decode: column {name!r} is not UTF-8 at byte {e.start}")
    flags = [False] * len(col)
    for i in invalid:
        flags[i] = True
    return pc.if_else(pa.array(flags), pa.scalar(None, col.type), col).cast(pa.string())


def _not_utf8(col: pa.Array, offset: int) -> set[int]:
    """Indices (plus ``offset``) of the values of ``col`` that are not UTF-8, found by casting halves:
    a few bad values cost a few vectorised casts, not a walk over the column."""
    if len(col) <= 64:
        out = set()
        for i, v in enumerate(col.to_pylist()):
            if v is not None and not _is_utf8(v):
                out.add(offset + i)
        return out
    half = len(col) // 2
    found: set[int] = set()
    for start, part in ((0, col.slice(0, half)), (half, col.slice(half))):
        try:
            part.cast(pa.string())
        except pa.ArrowInvalid:
            found |= _not_utf8(part, offset + start)
    return found


def _csv_line(fields: Any, delimiter: str) -> bytes:
    """A record's fields (text; undecodable bytes as surrogates) written back as one CSV line."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(fields)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _csv_raw(row: dict[str, bytes | None], delimiter: str) -> tuple[str, bytes | None]:
    """The raw form of a CSV record for the quarantine: its fields as a JSON object of text, plus the
    record as CSV bytes when a field is not UTF-8 (the text shows those bytes as ``\\xNN``)."""
    text = {k: None if v is None else v.decode("utf-8", "backslashreplace") for k, v in row.items()}
    raw = json.dumps(text, ensure_ascii=False)
    if all(v is None or _is_utf8(v) for v in row.values()):
        return raw, None
    fields = ["" if v is None else v.decode("utf-8", "surrogateescape") for v in row.values()]
    return raw, _csv_line(fields, delimiter)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _infer_csv_type(col: pa.Array) -> pa.DataType:
    valid = col.drop_null()
    if len(valid) == 0:
        return pa.string()
    for t in (pa.int64(), pa.float64()):
        try:
            out = pc.cast(valid, t, safe=True)
            if pa.types.is_floating(t) and not pc.all(pc.is_finite(out)).as_py():
                continue
            return t
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return infer_type(valid.to_pylist()) if len(valid) else pa.string()


def _json_raw(row: dict[str, Any]) -> tuple[str, bytes | None]:
    return json.dumps(row, default=str, ensure_ascii=False), None


def _split_bad_lazy(
    typed: pa.Table,
    original: pa.Table,
    bad: dict[int, str],
    coord: Callable[[int], str],
    raw_of: Callable[[dict[str, Any]], tuple[str, bytes | None]] = _json_raw,
) -> tuple[pa.Table, list[Rejected], Describe]:
    """Split the bad rows off a columnar chunk: the good rows, the bad ones as rejected records (their
    raw form is ``raw_of`` the row as read: JSON by default; a reason's prefix, ``type:`` or ``decode:``,
    names its check), and a ``describe`` that makes the raw record and coordinates of good rows on
    demand (for those a row check sends to the quarantine)."""
    order = sorted(bad)
    rejected = []
    if order:
        rows = original.take(pa.array(order, pa.int64())).to_pylist()
        for i, r in zip(order, rows, strict=True):
            raw, exact = raw_of(r)
            check = "decode" if bad[i].startswith("decode:") else "type"
            rejected.append(Rejected(raw, coord(i), check, bad[i], raw_bytes=exact))
    keep = [i for i in range(typed.num_rows) if i not in bad] if bad else None

    def describe(indices: list[int]) -> list[tuple[str, str]]:
        at = [keep[i] for i in indices] if keep is not None else list(indices)
        rows = original.take(pa.array(at, pa.int64())).to_pylist()
        return [(raw_of(r)[0], coord(i)) for i, r in zip(at, rows, strict=True)]

    good = typed.take(pa.array(keep, pa.int64())) if keep is not None else typed
    return good, rejected, describe


def split_bad(
    table: pa.Table, raw: list[str], coords: list[str], rejected: list[Rejected], bad: dict[int, str]
) -> tuple[pa.Table, list[str], list[str], list[Rejected]]:
    """Move the rows listed in ``bad`` (index -> reason) from ``table``/``raw``/``coords`` to ``rejected`` (the
    check is the reason's prefix: ``decode`` or ``type``)."""
    if not bad:
        return table, raw, coords, rejected
    keep = [i for i in range(table.num_rows) if i not in bad]
    for i in sorted(bad):
        rejected.append(Rejected(raw[i], coords[i], "decode" if bad[i].startswith("decode:") else "type", bad[i]))
    return table.take(pa.array(keep, pa.int64())), [raw[i] for i in keep], [coords[i] for i in keep], rejected
