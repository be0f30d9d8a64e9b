"""The columnar fast path of ``decode_events`` gives exactly what the record path gives, or falls back."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import icefield.ingest.debezium_codec as codec
from icefield.ingest.debezium_codec import DecodedEvents, decode_events


def envelope(op: str, row: dict[str, Any] | None, *, before: dict[str, Any] | None = None, commit: int | None = 100, lsn: int = 90, txid: int | None = 7, ts: int | None = 1_700_000_000_000) -> bytes:
    source = {"version": "3.6.1.Final", "connector": "postgresql", "ts_ms": ts, "snapshot": "false", "db": "shop",
              "sequence": orjson.dumps([None if commit is None else str(commit), str(lsn)]).decode(),
              "schema": "public", "table": "t", "txId": txid, "lsn": lsn, "xmin": None}  # fmt: skip
    doc = {"before": before, "after": row if op != "d" else None, "source": source, "transaction": None, "op": op, "ts_ms": 1_700_000_000_500}
    return orjson.dumps(doc)


def record_path(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> DecodedEvents:
    with monkeypatch.context() as m:
        m.setattr(codec, "_FAST", False)
        return decode_events(*args, **kwargs)


def assert_same(fast: DecodedEvents, slow: DecodedEvents) -> None:
    assert fast.rows.schema == slow.rows.schema
    assert fast.rows.to_pylist() == slow.rows.to_pylist()
    assert fast.truncates == slow.truncates
    assert fast.tombstones == slow.tombstones
    assert fast.rejected == slow.rejected
    assert fast.rejected_indices == slow.rejected_indices
    assert fast.key_columns == slow.key_columns
    assert fast.notes == slow.notes


def fast_path(values: list[Any], keys: list[Any] | None = None, **kwargs: Any) -> DecodedEvents | None:
    return codec._fast_decode(values, keys, kwargs.get("table_schema"), kwargs.get("max_record_bytes", codec.DEFAULT_MAX_RECORD_BYTES), codec.DEFAULT_MAX_DEPTH)


COLUMNS = {
    "n": st.integers(-(1 << 62), 1 << 62),
    "x": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "s": st.text(max_size=8),
    "b": st.booleans(),
    "m": st.one_of(st.none(), st.integers(0, 9), st.text(max_size=3)),
}


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes | None], list[bytes | None]]:
    names = draw(st.lists(st.sampled_from(sorted(COLUMNS)), min_size=0, max_size=5, unique=True))
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    lsn = 1000
    for k in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["c", "u", "r", "d", "t", "tombstone"]))
        lsn += draw(st.integers(1, 50))
        row = {"id": k} | {n: draw(st.one_of(st.none(), COLUMNS[n])) for n in names if draw(st.booleans())}
        key = orjson.dumps({"id": k})
        if op == "tombstone":
            values.append(None)
        elif op == "d":
            values.append(envelope("d", None, before=row if draw(st.booleans()) else {"id": k}, commit=lsn + 5, lsn=lsn))
        elif op == "r":
            values.append(envelope("r", row, commit=None, lsn=lsn, txid=None))
        else:
            values.append(envelope(op, row if op != "t" else None, commit=lsn + 5, lsn=lsn, ts=draw(st.one_of(st.none(), st.just(1_700_000_000_123)))))
        keys.append(key)
    return values, keys




def in_blocks(m: pytest.MonkeyPatch) -> None:
    """Make every batch take the parallel parse: typed by its first two lines or so, parsed in 1 KB blocks."""
    m.setattr(codec, "_PARALLEL_BYTES", 0)
    m.setattr(codec, "_SAMPLE_BYTES", 600)
    m.setattr(codec, "_BLOCK_BYTES", 1024)


@pytest.mark.parametrize("blocks", [False, True], ids=["one block", "parallel blocks"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches(), typed=st.booleans())
def test_fast_path_equals_the_record_path(monkeypatch: pytest.MonkeyPatch, blocks: bool, batch: Any, typed: bool) -> None:
    values, keys = batch
    slow = record_path(monkeypatch, values, keys)
    schema = slow.rows.schema if typed else None
    slow = record_path(monkeypatch, values, keys, table_schema=schema)
    with monkeypatch.context() as m:
        if blocks:
            in_blocks(m)
        assert_same(decode_events(values, keys, table_schema=schema), slow)
        fast = fast_path(values, keys, table_schema=schema)
    if fast is not None:
        assert_same(fast, slow)


def test_a_large_batch_is_parsed_in_parallel_blocks_typed_by_its_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletes (a key-only 'before') and a double column appear only after the sample; the result is the
    record path's, and it came from several blocks."""
    values: list[bytes | None] = [envelope("c", {"id": i, "name": f"n{i}", "score": i + 0.5}, lsn=10 + 2 * i, commit=11 + 2 * i) for i in range(40)]
    values += [envelope("d", None, before={"id": i}, lsn=200 + i, commit=300 + i) for i in range(0, 40, 3)]
    keys = [orjson.dumps({"id": i}) for i in range(40)] + [orjson.dumps({"id": i}) for i in range(0, 40, 3)]
    blocks: list[int] = []
    real = codec._parse_lines

    def spy(buf: bytes) -> pa.Table:
        table = real(buf)
        blocks.append(table.column("op").num_chunks)
        return table

    with monkeypatch.context() as m:
        in_blocks(m)
        m.setattr(codec, "_SAMPLE_BYTES", 2000)
        m.setattr(codec, "_parse_lines", spy)
        fast = fast_path(values, keys)
    assert fast is not None and blocks and blocks[0] > 1
    assert_same(fast, record_path(monkeypatch, values, keys))
    # A value that does not fit the sample's types (text where the sample had numbers) is parsed again in
    # one block, typed by the whole batch.
    odd = [*values, envelope("c", {"id": 99, "name": "x", "score": "high"}, lsn=900, commit=901)]
    with monkeypatch.context() as m:
        in_blocks(m)
        m.setattr(codec, "_SAMPLE_BYTES", 2000)
        assert_same(decode_events(odd, [*keys, orjson.dumps({"id": 99})]), record_path(monkeypatch, odd, [*keys, orjson.dumps({"id": 99})]))


def usual() -> list[bytes | None]:
    return [
        envelope("c", {"id": 1, "name": "ann", "score": 1.5, "ok": True}, lsn=10, commit=20),
        envelope("u", {"id": 1, "name": "änn ☃", "score": 2.25, "ok": False}, lsn=30, commit=40),
        None,
        envelope("d", None, before={"id": 1}, lsn=50, commit=60),
        envelope("r", {"id": 2, "name": None, "score": 0.5, "ok": None}, commit=None, lsn=5, txid=None),
        envelope("t", None, lsn=70, commit=80),
    ]


def test_the_usual_batch_takes_the_fast_path_with_its_meta_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    values = usual()
    keys = [orjson.dumps({"id": 1})] * len(values)
    fast = fast_path(values, keys)
    assert fast is not None
    assert fast.rows.column_names == ["id", "name", "score", "ok", *codec.META_COLUMNS]
    assert fast.rows.column("__seq_commit").to_pylist() == [20, 40, 60, 0]
    assert fast.rows.column("__index").to_pylist() == [0, 1, 3, 4]
    assert [t.index for t in fast.truncates] == [5] and fast.tombstones == [2] and fast.key_columns == ["id"]
    assert_same(fast, record_path(monkeypatch, values, keys))


def test_fast_path_types_as_the_table_does(monkeypatch: pytest.MonkeyPatch) -> None:
    values = usual()
    schema = pa.schema([("id", pa.int32()), ("name", pa.string()), ("score", pa.float64()), ("ok", pa.bool_())])
    fast = fast_path(values, table_schema=schema)
    assert fast is not None and fast.rows.schema.field("id").type == pa.int32()
    assert_same(fast, record_path(monkeypatch, values, table_schema=schema))


def test_a_batch_that_starts_with_deletes_of_the_key_alone_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The columns (in the record path's order) come from the leading deletes and the first row after them:
    a delete whose 'before' is the key alone (REPLICA IDENTITY DEFAULT) used to send the whole batch down
    the record path whenever it came first (one W3 batch in 20)."""
    rows = [
        envelope("d", None, before={"id": 4}, lsn=1),
        envelope("d", None, before={"id": 5, "score": None}, lsn=2),
        envelope("c", {"id": 1, "name": "ann", "score": 1.5, "ok": True}, lsn=3),
        envelope("d", None, before={"id": 1}, lsn=4),
        envelope("u", {"id": 2, "name": "bob", "score": 2.5, "ok": False}, lsn=5),
    ]
    keys = [orjson.dumps({"id": k}) for k in (4, 5, 1, 1, 2)]
    fast = fast_path(rows, keys)
    assert fast is not None
    # 'score' comes second: the record path meets it in the second delete's 'before', null as it is.
    assert fast.rows.column_names[:4] == ["id", "score", "name", "ok"]
    assert_same(fast, record_path(monkeypatch, rows, keys))
    # Deletes only, and more leading deletes than are read one by one (the batch falls back).
    for values in (rows[:2], [envelope("d", None, before={"id": k}, lsn=k) for k in range(codec._LEADING_DELETES + 1)] + rows[2:3]):
        k = [orjson.dumps({"id": 1})] * len(values)
        if len(values) > codec._LEADING_DELETES:
            assert fast_path(values, k) is None
        else:
            assert fast_path(values, k) is not None
        assert_same(decode_events(values, k), record_path(monkeypatch, values, k))


FALLBACKS = {
    "embedded schema": lambda v: [b'{"schema":{"type":"struct"},"payload":' + v[0] + b"}", *v[1:]],
    "str value": lambda v: [v[0].decode(), *v[1:]],
    "newline in a value": lambda v: [v[0].replace(b'"op"', b'\n"op"'), *v[1:]],
    "json null": lambda v: [b"null", *v[1:]],
    "parse error": lambda v: [*v[:-1], v[-1][:-5]],
    "unknown op": lambda v: [v[0].replace(b'"op":"c"', b'"op":"x"'), *v[1:]],
    "unexpected top-level field": lambda v: [v[0].replace(b'"op":', b'"extra":1,"op":'), *v[1:]],
    "sequence of another shape": lambda v: [v[0].replace(b'[\\"20\\",\\"10\\"]', b'[\\"20\\", \\"10\\"]'), *v[1:]],
    "nested row value": lambda v: [v[0].replace(b'"name":"ann"', b'"name":{"first":"ann"}'), *v[1:]],
    "int then text in a column": lambda v: [v[0].replace(b'"name":"ann"', b'"name":5'), *v[1:]],
    "a date in new text": lambda v: [v[0].replace(b'"name":"ann"', b'"name":"2024-01-02"'), *v[1:]],
    "whole doubles only": lambda v: [x.replace(b'"score":1.5', b'"score":1.0').replace(b'"score":2.25', b'"score":2.0').replace(b'"score":0.5', b'"score":3.0') if x else x for x in v],
    "NaN": lambda v: [v[0].replace(b'"score":1.5', b'"score":NaN'), *v[1:]],
    # pyarrow reads Inf and -Inf as numbers, in the row or out of it
    "Inf": lambda v: [v[0].replace(b'"score":1.5', b'"score":Inf'), *v[1:]],
    "Inf outside the row": lambda v: [v[0].replace(b'"op":', b'"ts_us":-Inf,"op":'), *v[1:]],
    "carriage return": lambda v: [v[0].replace(b'"op"', b'\r"op"'), *v[1:]],
    "embedded schema in a later value": lambda v: [*v[:-1], b'{"schema":{"type":"struct"},"payload":' + v[-1] + b"}"],
    "empty value": lambda v: [*v[:2], b"", *v[2:]],
    "delete without its key in before": lambda v: [*v[:3], envelope("d", None, before={"name": "ann"}, lsn=50), *v[4:]],
    "delete with a null before": lambda v: [*v[:3], envelope("d", None, before=None, lsn=50), *v[4:]],
    "meta column in a row": lambda v: [v[0].replace(b'"name":', b'"__op":'), *v[1:]],
    "only truncates and tombstones": lambda v: [v[2], v[5]],
    "bad UTF-8 in a field name": lambda v: [v[0].replace(b'"op":', b'"\x80op":'), *v[1:]],
    "bad UTF-8 in a row's field name": lambda v: [v[0].replace(b'"name":', b'"n\xffame":'), *v[1:]],
    "bad UTF-8 in a value": lambda v: [v[0].replace(b'"name":"ann"', b'"name":"a\xc3nn"'), *v[1:]],
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_what_the_fast_path_cannot_prove_falls_back_with_the_right_answer(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    values = [v.replace(b"\xe2\x98\x83", b"") if isinstance(v, bytes) else v for v in usual()]
    values = FALLBACKS[case](values)
    keys = [orjson.dumps({"id": 1})] * len(values)
    assert fast_path(values, keys) is None
    assert_same(decode_events(values, keys), record_path(monkeypatch, values, keys))


def test_oversized_records_and_table_types_it_does_not_handle_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    values = usual()
    assert fast_path(values, max_record_bytes=100) is None
    assert_same(decode_events(values, max_record_bytes=100), record_path(monkeypatch, values, max_record_bytes=100))
    schema = pa.schema([("score", pa.decimal128(10, 2))])
    assert fast_path(values, table_schema=schema) is None
    assert_same(decode_events(values, table_schema=schema), record_path(monkeypatch, values, table_schema=schema))
    narrow = pa.schema([("id", pa.int8())])
    big = [envelope("c", {"id": 300}, lsn=1)]
    assert fast_path(big, table_schema=narrow) is None
    assert_same(decode_events(big, table_schema=narrow), record_path(monkeypatch, big, table_schema=narrow))
