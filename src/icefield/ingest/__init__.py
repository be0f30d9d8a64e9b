"""Sources: each yields :class:`SourceBatch` objects (Arrow rows plus the source position after them).

A source never writes. It reads from where the committed position says, in bounded chunks, and tells
the writer what to replace when a source unit (a file) changed. Built-ins: ``sql``, ``files``, ``kafka``, ``debezium`` and ``http``;
a registry maps names to lazy loaders so optional backends import only when used.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, overload

import pyarrow as pa

from icefield.errors import ConfigError

if TYPE_CHECKING:
    from icefield.config import PipelineConfig, Project
    from icefield.config.window import Window
    from icefield.engines.base import Engine, Frame


@dataclass(frozen=True)
class Rejected:
    """A record the decoder could not turn into a row: kept raw for the quarantine.

    ``raw`` is the record as text; ``raw_bytes`` holds the record's exact bytes when the text cannot
    (invalid UTF-8: ``raw`` then shows the bad bytes as ``\\xNN``), else None."""

    raw: str
    coords: str
    check: str
    reason: str
    raw_bytes: bytes | None = None


@dataclass
class SourceBatch:
    """One unit of work: rows, where they came from, and the position after them.

    ``data`` holds the decoded rows; ``raw`` and ``coords`` (same length as ``data``, or None) keep each
    row's original record and source coordinates for the quarantine. ``position`` is the JSON-able source
    position once this batch is committed; ``key`` describes the source range deterministically (the batch
    id derives from it). ``replace_file`` names a source file whose earlier rows this batch replaces.
    ``open_schema`` is True when the records carry no schema of their own (JSON): a column absent from
    every record is null for this batch, not a dropped column (see icefield.write.contracts).
    """

    data: pa.Table
    position: dict[str, Any]
    key: str
    raw: Sequence[str] | None = None
    coords: Sequence[str] | None = None
    rejected: list[Rejected] = field(default_factory=list)
    replace_file: str | None = None
    coord_label: str = ""
    coord_keys: list[str] = field(default_factory=list)
    coord_offset: int = 0
    filtered: int = 0
    truncate_at: list[int] | None = None
    open_schema: bool = False
    # ``describe(indices)`` -> ``(raw record, coordinates)`` of rows of ``data``, for sources that keep no
    # raw text per row but can make it on demand (columnar files).
    describe: Callable[[list[int]], list[tuple[str, str]]] | None = None
    # Rows of the batch the engine read and holds (icefield.engines.base.Frame), besides ``data`` (which then
    # holds none of them; its schema is the batch's). icefield.quality.frames says how they are checked.
    frame: Frame | None = None
    # ``redecode(batch, rows)``: for a frame whose rows the engine decoded, decode again here the rows it hands
    # back (a check may refuse them, or the engine could not decode them as the table is): sets ``data``,
    # ``raw`` and ``coords`` and adds to ``rejected``, as a batch read here would have them.
    redecode: Callable[[SourceBatch, pa.Table], None] | None = None
    # The date window whose rows this batch replaces (a window backfill: :meth:`Source.read_window`); its
    # ``position`` is then not the source's and is never committed.
    window: Window | None = None
    # The source time of the newest change in the batch (Debezium: ``source.ts_ms``), for the CDC lag
    # (:class:`icefield.observe.events.SourceLag`); None when the source has no such time or the batch no change.
    change_time: dt.datetime | None = None

    def describe_rows(self, indices: list[int]) -> list[tuple[str, str]]:
        """``(raw record, source coordinates)`` of the rows at ``indices`` of ``data``; derived from the
        decoded values when the source kept no raw text."""
        if self.raw is not None and self.coords is not None:
            return [(self.raw[i], self.coords[i]) for i in indices]
        if self.describe is not None:
            return self.describe(indices)
        rows = self.data.take(pa.array(indices, pa.int64())).to_pylist()
        names = self.data.column_names
        out = []
        for i, row in zip(indices, rows, strict=True):
            raw = json.dumps(row, default=str, ensure_ascii=False)
            out.append((raw, row_coords(self.coord_label, names, tuple(row.values()), self.coord_keys, self.coord_offset + i)))
        return out

    @property
    def rows_in(self) -> int:
        return self.data.num_rows + len(self.rejected) + self.filtered + (self.frame.rows if self.frame is not None else 0)


def row_coords(label: str, names: list[str], row: tuple[Any, ...], keys: list[str], index: int) -> str:
    """Source coordinates of a row: its key values when keys are known, else its position in the batch."""
    present = [k for k in keys if k in names]
    if present:
        return f"{label} " + ",".join(f"{k}={row[names.index(k)]}" for k in present)
    return f"{label} row {index}"


_DATETIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")


def cursor_time(position: dict[str, Any] | None) -> dt.datetime | None:
    """The newest cursor value a position holds when the cursor is a timestamp (a ``sql`` source's cursor
    column of a date-time type, or text of the form ``YYYY-MM-DD HH:MM...``), in UTC (a value without a zone is read as UTC); None for any other
    position. The freshness metric is measured from it (:mod:`icefield.observe.metrics`)."""
    cursor = (position or {}).get("cursor")
    if isinstance(cursor, dict) and cursor.get("t") == "datetime" and isinstance(cursor.get("v"), str):
        text = cursor["v"]
    elif isinstance(cursor, str) and _DATETIME_TEXT.match(cursor):  # SQLite keeps date-times as text
        text = cursor
    else:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class LazyStrings(Sequence[str]):
    """``raw`` or ``coords`` of a batch's rows, made only for the rows that are looked at."""

    def __init__(self, n: int, get: Callable[[int], str], index: Sequence[int] | None = None) -> None:
        self._n = n
        self._get = get
        self._index = index

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._get(self._index[i] if self._index is not None else i)


def match_files(root: Path, pattern: str) -> list[Path]:
    """The files matching the glob ``pattern`` (relative to ``root`` unless absolute), in name order."""
    base = Path(pattern)
    if base.is_absolute():
        anchor = Path(base.anchor)
        matches = anchor.glob(str(base.relative_to(anchor)))
    else:
        matches = root.glob(pattern)
    return sorted(p for p in matches if p.is_file())


def relative_name(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` (POSIX form), or its absolute form when outside ``root``: the name a
    file has in source positions and coordinates."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


@dataclass(frozen=True)
class SourceCapabilities:
    incremental: bool = False
    cdc: bool = False
    streaming: bool = False


class Source:
    """Base class of sources. Subclasses set ``capabilities`` and implement :meth:`read`."""

    capabilities: ClassVar[SourceCapabilities] = SourceCapabilities()

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Yield batches after ``position`` (None: from the start). ``schema`` is the target table's
        current Arrow schema (or None) so decoders can type values the way the table expects."""
        raise NotImplementedError

    def follow(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Like :meth:`read`, but keep waiting for new records instead of stopping at the end (a batch
        then closes at its size or its source's time limit). Ends when :meth:`stop` is called. Only
        sources whose capabilities say ``streaming`` implement it; others raise :class:`ConfigError`."""
        raise ConfigError(f"a {type(self).__name__} cannot follow its source; run it without --follow")

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Ask :meth:`follow` to end after the current batch (safe from another thread or a signal handler)."""

    def acknowledge(self, position: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Called by the runner right after the batch that ends at ``position`` is committed to the table
        (or found already committed). A source may tell its upstream (Kafka consumer-group offsets); this
        is a hint only: the position read back from the table always wins."""

    def lag(self, position: dict[str, Any]) -> dict[str, dict[int, int]] | None:
        """Called by the runner after :meth:`acknowledge`: the messages the source holds beyond ``position``
        (what the batch committed), per topic and partition, when the source can tell without waiting on a
        server (Kafka: the high watermarks its consumer last saw); None when it cannot (the default)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once after the run."""

    def read_with(self, engine: Engine) -> None:  # noqa: B027 - optional hook
        """Offered by :func:`open_source` when ``engine`` reads this source type itself: the source may then
        yield batches whose rows the engine holds (:attr:`SourceBatch.frame`)."""

    def read_window(self, windows: list[Window], column: str, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Yield, for each of ``windows`` in order, one batch holding every row of the source whose
        ``column`` lies in that window (:attr:`SourceBatch.window` set), whatever the committed position
        says: a window backfill (:mod:`icefield.config.window`). Records the source cannot decode are left
        out (the regular run quarantines them). Sources that cannot be read by date raise :class:`ConfigError`."""
        raise ConfigError(f"a {type(self).__name__} cannot be read by date window; remove --window (or the pipeline's window key)")


def window_mask(data: pa.Table, column: str, window: Window, where: str) -> pa.Array:
    """Which rows of ``data`` have ``column`` in ``window`` (:meth:`Window.mask`). Raises :class:`ConfigError`
    (naming ``where``) when ``data`` lacks the column or it is not a date or a timestamp."""
    if column not in data.column_names:
        raise ConfigError(
            f"{where}: the source has no column {column!r} to cut windows on (columns: {', '.join(data.column_names)}); fix window.column"
        )
    try:
        return window.mask(data.column(column))
    except ValueError as e:
        raise ConfigError(
            f"{where}: column {column!r} of the source: {e}; fix window.column (a files source may declare the column's "
            "type in source.columns, e.g. timestamp)"
        ) from None


def window_batches(batches: Iterator[SourceBatch], column: str, windows: list[Window], where: str, label: str) -> Iterator[SourceBatch]:
    """Regroup ``batches`` (rows in any order) into one batch per window of ``windows`` holding the rows whose
    ``column`` lies in it (see :func:`window_mask`), yielded in the order of ``windows`` once every batch was
    read; rows in no window are left out, and so are the records the source rejected (their window is not
    known). Each row keeps its raw record and coordinates, made when the quarantine asks for them."""
    import logging

    parts: list[list[tuple[SourceBatch, pa.Table, list[int]]]] = [[] for _ in windows]
    rejected = 0
    for batch in batches:
        rejected += len(batch.rejected)
        if not batch.data.num_rows:
            continue
        for i, w in enumerate(windows):
            mask = window_mask(batch.data, column, w, where)
            idx = mask.to_numpy(zero_copy_only=False).nonzero()[0].tolist()
            if idx:
                parts[i].append((batch, batch.data.take(pa.array(idx, pa.int64())), idx))
    if rejected:
        logging.getLogger(__name__).warning(
            "%s: %d records could not be decoded and are left out of the window backfill (the regular run quarantines them)", where, rejected
        )
    for w, segments in zip(windows, parts, strict=True):
        yield _window_batch(w, column, segments, label)


def _window_batch(window: Window, column: str, segments: list[tuple[SourceBatch, pa.Table, list[int]]], label: str) -> SourceBatch:
    """One window's rows (``segments``: each a source batch, its rows in the window, their indices there)."""
    if segments:
        data = pa.concat_tables([t for _, t, _ in segments], promote_options="permissive")
    else:
        data = pa.table({})
    starts, n = [], 0
    for _, t, _ in segments:
        starts.append(n)
        n += t.num_rows

    def describe(indices: list[int]) -> list[tuple[str, str]]:
        import bisect

        out = []
        for i in indices:
            k = bisect.bisect_right(starts, i) - 1
            batch, _, idx = segments[k]
            out.extend(batch.describe_rows([idx[i - starts[k]]]))
        return out

    return SourceBatch(
        data=data,
        position={},
        key=f"window:{column}:{window.label}",
        coord_label=label,
        open_schema=any(b.open_schema for b, _, _ in segments),
        describe=describe,
        window=window,
    )


def rebatch(batches: Any, size: int, skip: int, first: int | None = None) -> Iterator[tuple[int, pa.Table]]:
    """Regroup Arrow record batches into tables of exactly ``size`` rows (the first of ``first`` rows when
    given; the last may be shorter), dropping the first ``skip`` rows. Yields ``(index of the first row,
    table)``."""
    want = size if first is None else first
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    seen = 0
    start = skip
    for rb in batches:
        if seen + rb.num_rows <= skip:
            seen += rb.num_rows
            continue
        if seen < skip:
            rb = rb.slice(skip - seen)
            seen = skip
        seen += rb.num_rows
        pending.append(rb)
        pending_rows += rb.num_rows
        while pending_rows >= want:
            table = pa.Table.from_batches(pending)
            yield start, table.slice(0, want)
            rest = table.slice(want)
            start += want
            want = size
            pending = rest.to_batches() if rest.num_rows else []
            pending_rows = rest.num_rows
    if pending_rows:
        yield start, pa.Table.from_batches(pending)


_REGISTRY: dict[str, str] = {
    "sql": "icefield.ingest.sql:SqlSource",
    "files": "icefield.ingest.files:FilesSource",
    "kafka": "icefield.ingest.kafka:KafkaSource",
    "debezium": "icefield.ingest.debezium:DebeziumSource",
    "http": "icefield.ingest.http:HttpSource",
}


def open_source(pipeline: PipelineConfig, project: Project, batch_size: int, engine: Engine | None = None) -> Source:
    """Instantiate the source a pipeline declares. Raises :class:`ConfigError` for unknown types. When
    ``engine`` reads sources of this type itself (:attr:`~icefield.engines.base.EngineCapabilities.reads`),
    the source is offered it (:meth:`Source.read_with`)."""
    kind = pipeline.source.type
    try:
        module_name, cls_name = _REGISTRY[kind].split(":")
    except KeyError:
        raise ConfigError(f"unknown source type {kind!r}; use one of {sorted(_REGISTRY)}") from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    source: Source = cls(pipeline, project, batch_size)
    if engine is not None and kind in engine.capabilities.reads:
        source.read_with(engine)
    return source
