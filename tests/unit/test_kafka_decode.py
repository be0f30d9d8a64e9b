"""The kafka source without a broker: JSON decoding (fast path == record path), positions, batch keys,
config and the runner's acknowledge/follow hooks."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from icefield.config.models import KafkaSourceConfig, PipelineConfig
from icefield.errors import ConfigError, MissingDependencyError, SecretError, SourceError
from icefield.ingest import Source, SourceBatch, SourceCapabilities
from icefield.ingest.kafka import (
    JsonDecoder,
    KafkaReader,
    consumer_config,
    import_confluent_kafka,
    position_offsets,
    position_state,
    range_key,
)


def coord(i: int) -> str:
    return f"t/0/{100 + i}"


def rows_of(decoded: Any) -> list[dict[str, Any]]:
    return decoded.data.to_pylist()


# ------------------------------------------------------------------------------------ decoding


def test_good_messages_become_typed_rows_in_message_order() -> None:
    values = [json.dumps({"id": i, "name": f"n{i}", "price": i / 2, "ok": i % 2 == 0}).encode() for i in range(5)]
    decoded = JsonDecoder().decode(values, coord, None)
    assert decoded.data.schema == pa.schema(
        [("id", pa.int64()), ("name", pa.string()), ("price", pa.float64()), ("ok", pa.bool_())]
    )
    assert [r["id"] for r in rows_of(decoded)] == [0, 1, 2, 3, 4]
    assert decoded.rejected == []
    assert decoded.raw[3] == values[3].decode() and decoded.coords[3] == "t/0/103"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"id": 9, bad', "decode: not valid JSON"),
        (b"\xff\xfe{}", "decode: invalid UTF-8 at byte 0"),
        (b"[1, 2]", "decode: a JSON object is expected, got list"),
        (b'"text"', "decode: a JSON object is expected, got str"),
        (b'{"id": NaN}', "decode: not valid JSON"),
        (None, "decode: the message has no value (a tombstone)"),
        (b"", "decode: not valid JSON"),
    ],
)
def test_undecodable_messages_are_rejected_with_their_coordinates(value: bytes | None, reason: str) -> None:
    values = [b'{"id": 1}', value, b'{"id": 3}']
    decoded = JsonDecoder().decode(values, coord, None)
    assert [r["id"] for r in rows_of(decoded)] == [1, 3]
    assert len(decoded.rejected) == 1
    bad = decoded.rejected[0]
    assert bad.coords == "t/0/101" and bad.check == "decode" and bad.reason.startswith(reason)
    expected_raw = "" if value is None else value.decode("utf-8", errors="backslashreplace")
    assert bad.raw == expected_raw
    # The surviving rows keep their own coordinates and raw text.
    assert list(decoded.coords) == ["t/0/100", "t/0/102"]
    assert list(decoded.raw) == ['{"id": 1}', '{"id": 3}']
    assert decoded.index == [0, 2]


def test_values_that_do_not_fit_the_table_type_are_rejected_not_coerced() -> None:
    schema = pa.schema([("id", pa.int32()), ("day", pa.date32()), ("amount", pa.decimal128(6, 2))])
    values = [
        b'{"id": 1, "day": "2024-01-02", "amount": 1.25}',
        b'{"id": 3000000000, "day": "2024-01-02", "amount": 1}',
        b'{"id": 2, "day": "2024-02-30", "amount": 2}',
        b'{"id": 4, "day": "2024-01-03", "amount": "3.50"}',
    ]
    decoded = JsonDecoder().decode(values, coord, schema)
    assert rows_of(decoded) == [
        {"id": 1, "day": dt.date(2024, 1, 2), "amount": decimal.Decimal("1.25")},
        {"id": 4, "day": dt.date(2024, 1, 3), "amount": decimal.Decimal("3.50")},
    ]
    reasons = {r.coords: r.reason for r in decoded.rejected}
    assert reasons.keys() == {"t/0/101", "t/0/102"}
    assert "does not fit in 32 bits" in reasons["t/0/101"]
    assert "not a valid date" in reasons["t/0/102"]
    assert all(r.check == "type" for r in decoded.rejected)
    assert list(decoded.coords) == ["t/0/100", "t/0/103"]


def test_text_is_never_silently_turned_into_a_number() -> None:
    decoded = JsonDecoder().decode([b'{"n": "12abc"}', b'{"n": 5}'], coord, pa.schema([("n", pa.int64())]))
    assert rows_of(decoded) == [{"n": 5}]
    assert [r.coords for r in decoded.rejected] == ["t/0/100"]


def test_types_learned_in_one_batch_hold_for_the_next() -> None:
    decoder = JsonDecoder()
    decoder.decode([b'{"when": "2024-01-02T03:04:05"}'], coord, None)
    second = decoder.decode([b'{"when": "2024-05-06T07:08:09"}', b'{"when": "soon"}'], coord, None)
    assert second.data.schema.field("when").type == pa.timestamp("us")
    assert rows_of(second) == [{"when": dt.datetime(2024, 5, 6, 7, 8, 9)}]
    assert [r.coords for r in second.rejected] == ["t/0/101"]


_keys = st.sampled_from(["a", "b", "c"])
_scalars = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from(["2024-01-02", "2024-01-02T03:04:05", "2024-01-02 03:04:05+02:00", "12", "1.5", "true", " 7"]),
)
_values = st.one_of(_scalars, st.lists(st.integers(-5, 5), max_size=2), st.dictionaries(_keys, st.integers(-5, 5), max_size=2))
_objects = st.dictionaries(_keys, _values, max_size=3)
_poison = st.sampled_from([b"{bad", b"[1]", b"\xff", b'{"a": NaN}', b'{"a": 1, "a": 2}', b'{"a": 1}{"b": 2}', b"  {}", None])
_types = st.sampled_from(
    [pa.int64(), pa.int32(), pa.float64(), pa.string(), pa.bool_(), pa.date32(), pa.timestamp("us"), pa.decimal128(10, 2)]
)


@st.composite
def _batches(draw: Any) -> tuple[list[bytes | None], pa.Schema | None]:
    values: list[bytes | None] = [
        json.dumps(o).encode() if not isinstance(o, bytes) and o is not None else o
        for o in draw(st.lists(st.one_of(_objects, _objects, _objects, _poison), min_size=1, max_size=8))
    ]
    known = draw(st.dictionaries(_keys, _types, max_size=3))
    return values, pa.schema(list(known.items())) if known else None


_kinds = {
    "int": st.integers(min_value=-(2**40), max_value=2**40),
    "float": st.floats(min_value=-1e6, max_value=1e6).map(lambda f: round(f, 3)),
    "bool": st.booleans(),
    "text": st.text(alphabet="abc xyz", max_size=4),
    "day": st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2030, 1, 1)).map(str),
}


@st.composite
def _typed_batches(draw: Any) -> tuple[list[bytes | None], pa.Schema | None]:
    """Batches whose columns each hold one kind of value (the common case the fast path is for), with
    an occasional odd value."""
    kinds = draw(st.dictionaries(_keys, st.sampled_from(sorted(_kinds)), min_size=1, max_size=3))
    value = {k: st.one_of(st.none(), _kinds[kind]) for k, kind in kinds.items()}
    objects = draw(st.lists(st.fixed_dictionaries({}, optional=value), min_size=1, max_size=8))
    if draw(st.booleans()):
        objects[draw(st.integers(0, len(objects) - 1))] = draw(_objects)
    values: list[bytes | None] = [json.dumps(o).encode() for o in objects]
    known = draw(st.dictionaries(_keys, _types, max_size=2))
    return values, pa.schema(list(known.items())) if known else None


def _columns(table: pa.Table) -> dict[str, list[Any]]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(_batches(), _typed_batches()))
def test_fast_path_equals_the_record_path(batch: tuple[list[bytes | None], pa.Schema | None]) -> None:
    """Whenever the batch parser accepts a batch, its rows, types, rejects and coordinates are exactly
    what decoding record by record (as JSON Lines files are) gives."""
    values, schema = batch
    decoder = JsonDecoder()
    types = decoder.types(schema)
    slow = decoder._slow(values, coord, types)
    fast = decoder._fast(values, coord, types)
    if fast is None:
        return
    slow_cols, fast_cols = _columns(slow.data), _columns(fast.data)
    for name, col in fast_cols.items():
        if name not in slow_cols:  # a known column absent from every message: all nulls
            assert name in types and all(v is None for v in col)
            continue
        assert fast.data.schema.field(name).type == slow.data.schema.field(name).type, name
        assert col == slow_cols[name], name
    assert set(slow_cols) <= set(fast_cols)
    assert [(r.coords, r.check, r.reason, r.raw) for r in fast.rejected] == [
        (r.coords, r.check, r.reason, r.raw) for r in slow.rejected
    ]
    assert list(fast.coords) == list(slow.coords)
    assert list(fast.raw) == list(slow.raw)


# ------------------------------------------------------------------------------------ positions


def test_positions_round_trip_and_keep_partitions_not_read() -> None:
    stored = {"topics": {"old": {"0": 7}, "t": {"0": 1}}}
    state = position_state({("t", 0): 10, ("t", 1): 4}, stored)
    assert state == {"topics": {"old": {"0": 7}, "t": {"0": 10, "1": 4}}}
    assert stored == {"topics": {"old": {"0": 7}, "t": {"0": 1}}}, "the stored position is not modified"
    assert position_offsets(state) == {("old", 0): 7, ("t", 0): 10, ("t", 1): 4}
    assert position_offsets(None) == {}


def test_a_malformed_position_is_refused() -> None:
    with pytest.raises(SourceError, match="not .*topics"):
        position_offsets({"files": {}})


def test_range_key_names_the_offset_ranges_of_partitions_that_advanced() -> None:
    start = {("t", 0): 100, ("t", 1): 5, ("u", 0): 0}
    end = {("t", 0): 200, ("t", 1): 5, ("u", 0): 3}
    assert range_key(start, end) == "kafka:t/0:100-200;u/0:0-3"
    assert range_key(dict(start), dict(end)) == range_key(start, end)


# ------------------------------------------------------------------------------------ config


def _pipeline(**source: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "ev", "source": {"type": "kafka", "bootstrap_servers": "127.0.0.1:1", **source}, "target": {"table": "raw.ev"}}
    )


def test_config_needs_exactly_one_of_topic_and_topics() -> None:
    assert _pipeline(topic="a").source.topic_names == ["a"]  # type: ignore[union-attr]
    assert _pipeline(topics=["a", "b"]).source.topic_names == ["a", "b"]  # type: ignore[union-attr]
    for bad in ({}, {"topic": "a", "topics": ["b"]}, {"topics": []}):
        with pytest.raises(ValidationError, match="topic"):
            _pipeline(**bad)


def test_consumer_config_resolves_secrets_and_defaults_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECRET", "s3cr3t-value")
    cfg = _pipeline(topic="a", properties={"sasl.password": "${env:KAFKA_SECRET}", "fetch.max.bytes": "1000"}).source
    assert isinstance(cfg, KafkaSourceConfig)
    conf = consumer_config(cfg, "ev", "pipeline 'ev': source")
    assert conf["sasl.password"] == "s3cr3t-value"
    assert conf["group.id"] == "icefield.ev" and conf["bootstrap.servers"] == "127.0.0.1:1"
    from icefield.config.secrets import redact

    assert redact("login failed with s3cr3t-value") == "login failed with ***"


def test_consumer_config_errors_name_the_key() -> None:
    cfg = _pipeline(topic="a", properties={"sasl.password": "${env:NOT_SET_ANYWHERE}"}).source
    assert isinstance(cfg, KafkaSourceConfig)
    with pytest.raises(SecretError, match=r"properties\.sasl\.password.*NOT_SET_ANYWHERE"):
        consumer_config(cfg, "ev", "pipeline 'ev': source")
    cfg = _pipeline(topic="a", properties={"group.id": "x"}).source
    assert isinstance(cfg, KafkaSourceConfig)
    with pytest.raises(ConfigError, match="source.group_id"):
        consumer_config(cfg, "ev", "pipeline 'ev': source")


def test_auto_commit_cannot_be_turned_on() -> None:
    with pytest.raises(ConfigError, match="enable.auto.commit"):
        KafkaReader({"bootstrap.servers": "x", "enable.auto.commit": "true"}, ["t"])


def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingDependencyError, match=r"pip install icefield\[kafka\]"):
        import_confluent_kafka()


# ------------------------------------------------------------------------------------ runner hooks


class _ListSource(Source):
    """A streaming source over fixed batches that records what the runner tells it."""

    capabilities = SourceCapabilities(incremental=True, streaming=True)

    def __init__(self, lake: Any) -> None:
        self.lake = lake
        self.acknowledged: list[tuple[dict[str, Any], int]] = []
        self.followed = False

    def _batches(self, position: dict[str, Any] | None) -> Iterator[SourceBatch]:
        start = position["n"] if position else 0
        for n in range(start, 3):
            yield SourceBatch(data=pa.table({"id": [n]}), position={"n": n + 1}, key=f"list:{n}")

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        return self._batches(position)

    def follow(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        self.followed = True
        return self._batches(position)

    def acknowledge(self, position: dict[str, Any]) -> None:
        # What the table holds when the source is told: the batch must already be committed.
        self.acknowledged.append((position, len(self.lake.rows("raw.ev"))))


def test_runner_acknowledges_each_batch_after_its_commit(lake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lk = lake({"ev": {"source": {"type": "kafka", "bootstrap_servers": "x", "topic": "t"}, "target": {"table": "raw.ev"}}})
    source = _ListSource(lk)
    monkeypatch.setattr("icefield.pipeline.runner.open_source", lambda *a: source)
    res = lk.run("ev")
    assert res.rows_committed == 3
    assert source.acknowledged == [({"n": 1}, 1), ({"n": 2}, 2), ({"n": 3}, 3)]
    assert not source.followed
    lk.run("ev", follow=True)
    assert source.followed


def test_follow_is_refused_for_a_source_that_cannot_stream(lake: Any, tmp_path: Any) -> None:
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "a.jsonl").write_text('{"id": 1}\n')
    lk = lake({"ev": {"source": {"type": "files", "path": "data/*.jsonl"}, "target": {"table": "raw.ev"}}})
    with pytest.raises(ConfigError, match="cannot follow"):
        lk.run("ev", follow=True)
    assert lk.run("ev").rows_committed == 1
