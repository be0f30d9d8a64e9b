"""The ``files`` source: CSV, JSON Lines and Parquet files matched by a glob.

Incremental by the set of files already loaded: the committed position maps each loaded file (path
relative to the project) to a fingerprint of its bytes. A new file is loaded; a file whose bytes changed
is reloaded and its earlier rows are replaced in the same commit (so it is never skipped nor doubled);
an unchanged file is skipped. Each file is one batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from icefield.config.models import FilesSourceConfig
from icefield.errors import ConfigError, SourceError
from icefield.ingest import Rejected, Source, SourceBatch, SourceCapabilities, rebatch
from icefield.quality.coerce import cast_column, convert_values, infer_type, parse_type

if TYPE_CHECKING:
    from icefield.config import PipelineConfig, Project

log = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def fingerprint(path: Path) -> str:
    """``<size>:<sha256>`` of a file's bytes."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return f"{size}:{h.hexdigest()}"


class FilesSource(Source):
    capabilities = SourceCapabilities(incremental=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, FilesSourceConfig)
        self.cfg = pipeline.source
        self.root = project.root
        self.batch_size = batch_size
        self.declared: dict[str, pa.DataType] | None = None
        if self.cfg.columns:
            try:
                self.declared = {k: parse_type(v) for k, v in self.cfg.columns.items()}
            except ValueError as e:
                raise ConfigError(f"pipeline {pipeline.name!r}: source.columns: {e}") from None
        if pipeline.target.mode == "append" and not self.cfg.file_column:
            raise ConfigError(
                f"pipeline {pipeline.name!r}: source.file_column: a files source in mode 'append' needs the "
                "file column to replace a changed file's rows; set it (default '_source_file')"
            )

    def list_files(self) -> list[Path]:
        pattern = self.cfg.path
        base = Path(pattern)
        if base.is_absolute():
            anchor = Path(base.anchor)
            matches = anchor.glob(str(base.relative_to(anchor)))
        else:
            matches = self.root.glob(pattern)
        return sorted(p for p in matches if p.is_file())

    def _rel(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        state = position or {}
        loaded: dict[str, str] = dict(state.get("files", {}))
        partial: dict[str, Any] | None = state.get("partial")
        self._learned: dict[str, pa.DataType] = {}
        self._schema = schema
        for path in self.list_files():
            rel = self._rel(path)
            fp = fingerprint(path)
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
            chunks = _peekable(self._chunks(path, rel, skip))
            for chunk in chunks:
                data, raw, coords, rejected, start, end = chunk
                if self.cfg.file_column:
                    data = data.append_column(self.cfg.file_column, pa.array([rel] * data.num_rows, pa.string()))
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
                    open_schema=self._format(path) == "jsonl",
                )
                replace = False
            partial = None

    # ------------------------------------------------------------------ decoding

    def _format(self, path: Path) -> str:
        if self.cfg.format != "auto":
            return self.cfg.format
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise SourceError(
                f"cannot tell the format of {path.name!r} from its extension; set source.format to "
                "csv, jsonl or parquet"
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

    def _chunks(self, path: Path, rel: str, skip: int) -> Iterator[Chunk]:
        """Decoded chunks of at most ``batch_size`` source records, after the first ``skip`` records."""
        fmt = self._format(path)
        if fmt == "jsonl":
            yield from self._jsonl_chunks(path, rel, skip)
        elif fmt == "csv":
            yield from self._csv_chunks(path, rel, skip)
        else:
            yield from self._parquet_chunks(path, rel, skip)

    def _jsonl_chunks(self, path: Path, rel: str, skip: int) -> Iterator[Chunk]:
        rows: list[dict[str, Any]] = []
        raw: list[str] = []
        coords: list[str] = []
        rejected: list[Rejected] = []
        record = 0  # non-blank lines seen
        start = skip
        with path.open("rb") as f:
            for lineno, line_bytes in enumerate(f, start=1):
                if not line_bytes.strip():
                    continue
                record += 1
                if record <= skip:
                    continue
                self._decode_json_line(line_bytes, f"{rel}:{lineno}", rows, raw, coords, rejected)
                if len(rows) + len(rejected) >= self.batch_size:
                    yield (*self._rows_to_table(rows, raw, coords, rejected), start, record)
                    rows, raw, coords, rejected = [], [], [], []
                    start = record
        if rows or rejected or start == skip:
            yield (*self._rows_to_table(rows, raw, coords, rejected), start, record)

    @staticmethod
    def _decode_json_line(
        line_bytes: bytes, where: str, rows: list[dict[str, Any]], raw: list[str], coords: list[str], rejected: list[Rejected]
    ) -> None:
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            text = line_bytes.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
            rejected.append(Rejected(text, where, "decode", f"decode: invalid UTF-8 at byte {e.start}"))
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

    def _rows_to_table(
        self,
        rows: list[dict[str, Any]],
        raw: list[str],
        coords: list[str],
        rejected: list[Rejected],
    ) -> tuple[pa.Table, list[str], list[str], list[Rejected]]:
        types = self._types()
        names: dict[str, None] = {}
        if self.declared:
            names.update(dict.fromkeys(self.declared))
        for r in rows:
            names.update(dict.fromkeys(r))
        bad: dict[int, str] = {}
        cols: dict[str, pa.Array] = {}
        for name in names:
            values = [r.get(name) for r in rows]
            t = types.get(name) or infer_type(values)
            cols[name] = convert_values(name, values, t, bad)
        table = pa.table(cols) if cols else pa.table({"_empty": pa.nulls(len(rows))}).drop(["_empty"])
        self._learn(table)
        return _split_bad(table, raw, coords, rejected, bad)

    def _csv_chunks(self, path: Path, rel: str, skip: int) -> Iterator[Chunk]:
        # Read every column as text, then type it strictly, so that one bad value cannot fail the file.
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            names = next(csv.reader(f, delimiter=self.cfg.delimiter), None)
        if not names:
            yield pa.table({}), [], [], [], skip, skip
            return
        try:
            reader = pacsv.open_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=self.cfg.delimiter),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True
                ),
            )
            batches = rebatch(reader, self.batch_size, skip)
            emitted = False
            for start, strings in batches:
                emitted = True
                yield (*self._type_strings(strings, rel, start), start, start + strings.num_rows)
            if not emitted:
                yield pa.table({n: pa.array([], pa.string()) for n in names}), [], [], [], skip, skip
        except pa.ArrowInvalid as e:
            raise SourceError(f"{rel}: not a readable CSV file: {e}; fix the file or set source.delimiter") from None

    def _type_strings(self, strings: pa.Table, rel: str, start: int) -> tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected]]:
        types = self._types()
        bad: dict[int, str] = {}
        cols: dict[str, pa.Array] = {}
        for name in strings.column_names:
            col = strings.column(name).combine_chunks()
            t = types.get(name) or _infer_csv_type(col)
            cols[name] = cast_column(name, col, t, bad)
        table = pa.table(cols)
        self._learn(table)
        return _split_bad_lazy(table, strings, bad, lambda i: f"{rel}:row {start + i + 1}")

    def _parquet_chunks(self, path: Path, rel: str, skip: int) -> Iterator[Chunk]:
        try:
            pf = pq.ParquetFile(path)
            batches = rebatch(pf.iter_batches(batch_size=self.batch_size), self.batch_size, skip)
            emitted = False
            for start, table in batches:
                emitted = True
                yield (*self._type_parquet(table, rel, start), start, start + table.num_rows)
            if not emitted:
                yield pf.schema_arrow.empty_table(), [], [], [], skip, skip
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"{rel}: not a readable Parquet file: {e}") from None

    def _type_parquet(self, table: pa.Table, rel: str, start: int) -> tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected]]:
        types = self._types()
        bad: dict[int, str] = {}
        cols = {
            name: cast_column(name, table.column(name), types[name], bad) if name in types else table.column(name).combine_chunks()
            for name in table.column_names
        }
        typed = pa.table(cols)
        self._learn(typed)
        return _split_bad_lazy(typed, table, bad, lambda i: f"{rel}#{start + i}")


Chunk = tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected], int, int]


class _peekable:
    """An iterator that can tell whether another item follows the one just returned."""

    def __init__(self, it: Iterator[Chunk]) -> None:
        self._it = it
        self._next: list[Chunk] = []

    def __iter__(self) -> _peekable:
        return self

    def __next__(self) -> Chunk:
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _infer_csv_type(col: pa.Array) -> pa.DataType:
    import pyarrow.compute as pc

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


def _split_bad_lazy(
    typed: pa.Table, original: pa.Table, bad: dict[int, str], coord: Callable[[int], str]
) -> tuple[pa.Table, list[str] | None, list[str] | None, list[Rejected]]:
    """Like :func:`_split_bad` for columnar sources: the raw record (the row as read, as JSON) and the
    coordinates are made only for the bad rows; the good rows get none (``None``: derived on demand)."""
    if not bad:
        return typed, None, None, []
    rows = original.take(pa.array(sorted(bad), pa.int64())).to_pylist()
    rejected = [
        Rejected(json.dumps(r, default=str, ensure_ascii=False), coord(i), "type", bad[i]) for i, r in zip(sorted(bad), rows, strict=True)
    ]
    keep = [i for i in range(typed.num_rows) if i not in bad]
    return typed.take(pa.array(keep, pa.int64())), None, None, rejected


def _split_bad(
    table: pa.Table, raw: list[str], coords: list[str], rejected: list[Rejected], bad: dict[int, str]
) -> tuple[pa.Table, list[str], list[str], list[Rejected]]:
    if not bad:
        return table, raw, coords, rejected
    keep = [i for i in range(table.num_rows) if i not in bad]
    for i in sorted(bad):
        rejected.append(Rejected(raw[i], coords[i], "type", bad[i]))
    return table.take(pa.array(keep, pa.int64())), [raw[i] for i in keep], [coords[i] for i in keep], rejected
