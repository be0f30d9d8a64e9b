"""The ``kafka`` source: JSON messages of Kafka topics, exactly once into Iceberg.

Two layers:

* :class:`KafkaReader`, the reusable reading core (the ``debezium`` source builds on it): it assigns
  every partition of the topics itself (no subscription, so no group rebalance), seeks each one to
  the position given (the table's: ``docs/architecture.md``, "The write path", rule 1; the consumer
  group's committed offset is only a hint for partitions the table does not know; then ``start``), and
  yields :class:`MessageBatch` objects bounded by a record count and a time limit.
  :meth:`KafkaReader.batches` stops at the high watermarks seen when it opened ("consume what is there
  and stop"), or with ``follow`` keeps polling until :meth:`KafkaReader.stop`.
  :meth:`KafkaReader.commit` writes the consumer-group offsets after the Iceberg commit.
* :class:`KafkaSource`, the pipeline source: each batch's messages are decoded as JSON objects with
  the typing rules of JSON Lines files (:mod:`icefield.ingest.files`, :mod:`icefield.ingest.coerce`);
  a message that is not UTF-8, not valid JSON, not an object or empty becomes a
  :class:`~icefield.ingest.Rejected` with the coordinates ``topic/partition/offset``.

The position is ``{"topics": {topic: {partition: next offset}}}`` for every partition read. A
batch's key lists the offset range it covers per partition (``kafka:t/0:100-200;t/1:...``), so its
batch id is deterministic. confluent-kafka is imported lazily (``pip install icefield[kafka]``).
"""

from __future__ import annotations

import copy
import decimal
import functools
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from itertools import chain
from sys import intern
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from icefield.config.models import KafkaSourceConfig
from icefield.config.secrets import redact, register_secret, resolve
from icefield.errors import ConfigError, IcefieldError, MissingDependencyError, SourceError, TransientError
from icefield.ingest import LazyStrings as _Lazy
from icefield.ingest import Rejected, Source, SourceBatch, SourceCapabilities
from icefield.ingest.ahead import read_ahead
from icefield.ingest.coerce import cast_column, records_to_table
from icefield.ingest.files import decode_json_line, split_bad

if TYPE_CHECKING:
    from pathlib import Path

    from icefield.config import PipelineConfig, Project

log = logging.getLogger(__name__)
client_log = logging.getLogger(f"{__name__}.client")
"""librdkafka's own log lines and error callbacks: hundreds a minute while a broker is down (the CLI
shows them with -v only); the last error is kept for the message of the error that ends the read."""

INSTALL_HINT = "pip install icefield[kafka]"
POLL_CHUNK = 10_000
"""Most messages asked of librdkafka per ``consume`` call."""
STALL_SECONDS = 60.0
"""Without ``follow``: how long the reader waits for a partition that is short of its end before failing."""

TopicPartition = tuple[str, int]
_FORCED = {
    "enable.auto.commit": "false",  # offsets are committed by us, after the Iceberg commit, and only as a hint
    "enable.auto.offset.store": "false",
    "enable.partition.eof": "true",  # tells the reader it reached the end of a partition
}
CONSUMER_DEFAULTS: dict[str, str] = {
    # librdkafka prefetches while a batch is decoded and committed; with its defaults (100k messages,
    # 64 MB) the queue fills and fetching then backs off for a whole second, leaving the broker idle.
    "queued.min.messages": "1000000",
    "queued.max.messages.kbytes": "131072",
    "fetch.queue.backoff.ms": "20",
}
"""Consumer settings a reader uses unless its configuration sets them."""
_SECRET_KEYS = re.compile(r"password|secret|token|credentials|key$", re.IGNORECASE)
SLICE_SECONDS = (0.5, 1.0, 2.0, 4.0)
"""While :meth:`KafkaReader.open` waits for the broker, how long its first, second... metadata or offset
requests may take (the last value for the rest) before the client's reports are read: a refused login
shows there (within about a second) rather than as a timeout, and a slow broker still gets longer waits."""
_REFUSALS: dict[str, str] = {
    "_AUTHENTICATION": "login",  # librdkafka: the broker refused the SASL login (or its mechanism)
    "SASL_AUTHENTICATION_FAILED": "login",
    "UNSUPPORTED_SASL_MECHANISM": "login",
    "TOPIC_AUTHORIZATION_FAILED": "topic",
    "GROUP_AUTHORIZATION_FAILED": "group",
    "CLUSTER_AUTHORIZATION_FAILED": "cluster",
}
"""Kafka error codes (by name) of a broker that refuses this client's login or access: only changed
credentials or ACLs help, never a retry. Kind: ``login``, or what access was refused."""


def import_confluent_kafka() -> Any:
    """Import confluent_kafka; raise :class:`MissingDependencyError` naming the extra when it is missing."""
    try:
        import confluent_kafka
    except ImportError as e:
        raise MissingDependencyError(f"the kafka source needs confluent-kafka ({e}): run `{INSTALL_HINT}`") from e
    return confluent_kafka


# ------------------------------------------------------------------------------------ positions


def position_state(offsets: Mapping[TopicPartition, int], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{(topic, partition): next offset}`` as the JSON position ``{"topics": {t: {"p": offset}}}``.

    Entries of ``base`` (a stored position) for partitions not in ``offsets`` are kept.
    """
    state: dict[str, Any] = copy.deepcopy(dict(base)) if base else {}
    topics = state.setdefault("topics", {})
    for (topic, partition), offset in sorted(offsets.items()):
        topics.setdefault(topic, {})[str(partition)] = int(offset)
    return state


def position_offsets(state: Mapping[str, Any] | None) -> dict[TopicPartition, int]:
    """The inverse of :func:`position_state`; raises :class:`SourceError` for a malformed position."""
    if not state:
        return {}
    try:
        return {
            (str(topic), int(partition)): int(offset)
            for topic, partitions in state["topics"].items()
            for partition, offset in partitions.items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SourceError(f"the stored Kafka position {state!r} is not {{'topics': {{topic: {{partition: offset}}}}}}: {e}") from e


def range_key(start: Mapping[TopicPartition, int], end: Mapping[TopicPartition, int]) -> str:
    """``kafka:t/0:100-200;t/1:7-9``: the offset ranges a batch covers (partitions that advanced only)."""
    parts = [f"{t}/{p}:{start[(t, p)]}-{end[(t, p)]}" for (t, p) in sorted(end) if end[(t, p)] != start.get((t, p))]
    return "kafka:" + ";".join(parts)


# ------------------------------------------------------------------------------------ reading core


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One Kafka record: where it is, its key and value bytes, and its timestamp (ms since the epoch)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None


@dataclass
class MessageBatch:
    """Messages read together, in partition order, with the positions before and after them.

    The messages are kept as tuples of their fields (``values``, ``keys``, ``topics``, ``partitions``,
    ``offsets`` and, when the reader keeps them, ``timestamps`` in ms since the epoch), not as
    confluent-kafka ``Message`` objects: Python's garbage collector stops walking a tuple of bytes,
    strings and ints after its first pass, while every full pass walks each live ``Message`` and each
    element of a list. ``values`` holds ``None`` for a tombstone. ``position`` is the JSON position after
    the batch (every partition), ``key`` its deterministic offset-range key.
    """

    values: Sequence[bytes | None]
    keys: Sequence[bytes | None]
    topics: Sequence[str]
    partitions: Sequence[int]
    offsets: Sequence[int]
    timestamps: Sequence[int | None] | None
    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]
    position: dict[str, Any]
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = range_key(self.start, self.end)

    def __len__(self) -> int:
        return len(self.values)

    def coords(self, i: int) -> str:
        """``topic/partition/offset`` of message ``i``."""
        return f"{self.topics[i]}/{self.partitions[i]}/{self.offsets[i]}"

    def records(self) -> list[KafkaMessage]:
        """The messages as :class:`KafkaMessage` objects (topic, partition, offset, key, value, timestamp)."""
        stamps = self.timestamps or [None] * len(self)
        return [
            KafkaMessage(*fields)
            for fields in zip(self.topics, self.partitions, self.offsets, self.keys, self.values, stamps, strict=True)
        ]


class KafkaReader:
    """Reads Kafka topics from explicit per-partition positions, in bounded batches.

    ``config`` is the librdkafka consumer configuration (``bootstrap.servers``, ``group.id``, security
    settings; secrets already resolved); auto-commit is always off. ``start`` says where a partition
    begins when neither the table nor the group has an offset for it. Use: :meth:`open`, then
    :meth:`batches`, :meth:`commit` after each durable write, :meth:`close`.

    Not thread-safe, except :meth:`stop`: call the rest from one thread (confluent-kafka's consumer
    hangs when one thread commits while another is inside ``consume``).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: Sequence[str],
        *,
        start: Literal["earliest", "latest"] = "earliest",
        timeout: float = 30.0,
        stall_seconds: float = STALL_SECONDS,
        timestamps: bool = False,
    ) -> None:
        if not topics:
            raise ConfigError("give at least one Kafka topic to read")
        for key in _FORCED:
            if key in config and str(config[key]).lower() != _FORCED[key]:
                raise ConfigError(
                    f"Kafka consumer property {key}={redact(str(config[key]))!r} is not allowed: icefield commits "
                    "offsets itself, inside the Iceberg commit; remove it"
                )
        self.config: dict[str, Any] = {**CONSUMER_DEFAULTS, **config, **_FORCED, "auto.offset.reset": start}
        self.topics = list(dict.fromkeys(topics))
        self.start = start
        self.timeout = timeout
        self.stall_seconds = stall_seconds
        self.timestamps = timestamps
        """Keep each message's timestamp (``MessageBatch.timestamps``)."""
        self._consumer: Any = None
        self._ck: Any = None
        self._stop = threading.Event()
        # Held around each poll: a synchronous offset commit made by another thread while this consumer
        # polls would wait for as long as the polling goes on (reading ahead polls in its own thread).
        self._polling = threading.Lock()
        self._stored: dict[str, Any] | None = None
        self.positions: dict[TopicPartition, int] = {}
        """Next offset to read per assigned partition (moves as batches are returned)."""
        self.ends: dict[TopicPartition, int] = {}
        """High watermark of each partition when :meth:`open` ran: where a run without ``follow`` stops."""
        self._eof: set[TopicPartition] = set()
        self._client_error: str | None = None
        self._refusal: ConfigError | None = None
        """The error for a login or access the broker refused, as the client reported it (``error_cb``)."""

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers, as messages may show them (secrets redacted)."""
        return redact(str(self.config.get("bootstrap.servers", "?")))

    def open(self, position: Mapping[str, Any] | None) -> None:
        """Connect, find every partition of the topics, and seek each to where reading resumes.

        A partition's start is the table's ``position`` if it has one, else the consumer group's
        committed offset (a hint), else the low or high watermark (``start``). Raises
        :class:`SourceError` if a topic does not exist or the stored position lies beyond a partition's
        end (the topic was recreated), :class:`ConfigError` if the broker refuses the login
        (``sasl.*`` settings) or access to a topic, the consumer group or the cluster (its ACLs), as soon
        as the client reports it, and :class:`TransientError` if Kafka cannot be reached.
        """
        ck = self._ck = import_confluent_kafka()
        stored = position_offsets(position)
        self._stored = dict(position) if position else None
        conf = dict(self.config)
        conf.setdefault("logger", client_log)
        conf.setdefault("error_cb", self._on_client_error)
        try:
            self._consumer = consumer = ck.Consumer(conf)
        except ck.KafkaException as e:
            raise ConfigError(f"invalid Kafka consumer settings: {redact(str(e))}") from None
        try:
            partitions = self._partitions()
            tps = [ck.TopicPartition(t, p) for t, p in partitions]
            committed = {
                (tp.topic, tp.partition): tp.offset for tp in self._retrying(functools.partial(consumer.committed, tps))
            }
            starts: dict[TopicPartition, int] = {}
            for tp in partitions:
                low, high = self._retrying(functools.partial(
                    consumer.get_watermark_offsets, ck.TopicPartition(*tp), cached=False
                ))
                self.ends[tp] = high
                starts[tp] = self._start_offset(tp, stored.get(tp), committed.get(tp, -1), low, high)
            consumer.assign([ck.TopicPartition(t, p, off) for (t, p), off in starts.items()])
        except ck.KafkaException as e:
            self.close()
            refused = self._refused(e.args[0] if e.args else None) or self._refusal
            if refused is not None:
                raise refused from e
            last = f" (the client last reported: {self._client_error})" if self._client_error else ""
            raise TransientError(f"cannot read Kafka at {self.bootstrap}: {redact(str(e))}{last}; check that it runs and rerun") from e
        except IcefieldError:
            self.close()
            raise
        self.positions = starts
        log.info("reading %s from %s; end offsets %s", self.topics, starts, self.ends)

    def _retrying(self, call: Callable[..., Any]) -> Any:
        """``call(timeout=seconds)``, retried for up to ``timeout`` seconds while Kafka says a retry can
        help (a partition without a leader yet, just after the broker started; a broker not answering yet).

        Each attempt may take the next of :data:`SLICE_SECONDS`; between attempts the client's reports are
        read, so a refused login or access ends the wait at once (:class:`ConfigError`): librdkafka retries
        those forever by itself and only ever says "timed out" to the call.
        """
        deadline = time.monotonic() + self.timeout
        codes = self._ck.KafkaError
        # Codes of a broker that just started: its group coordinator and partition leaders settle in.
        settling = {
            codes.NOT_COORDINATOR, codes.COORDINATOR_LOAD_IN_PROGRESS, codes.COORDINATOR_NOT_AVAILABLE,
            codes.LEADER_NOT_AVAILABLE, codes.NOT_LEADER_FOR_PARTITION,
        }
        # What a call says when its slice ran out: the broker is not answering (yet), or refuses us.
        waiting = {codes._TIMED_OUT, codes._TRANSPORT, codes._ALL_BROKERS_DOWN}
        for attempt in itertools.count():
            began = time.monotonic()
            wait = SLICE_SECONDS[min(attempt, len(SLICE_SECONDS) - 1)]
            try:
                return call(timeout=max(min(deadline - began, wait), 0.01))
            except self._ck.KafkaException as e:
                err: Any = e.args[0] if e.args else None
                refused = self._refused(err) or self._serve_reports()
                if refused is not None:
                    raise refused from e
                if err is None or not (err.retriable() or err.code() in settling | waiting) or time.monotonic() >= deadline:
                    raise
                if err.code() not in waiting:
                    log.info("Kafka at %s: %s; retrying", self.bootstrap, redact(str(e)))
                    time.sleep(0.2)
                elif time.monotonic() - began < wait / 2:
                    time.sleep(0.1)  # it failed at once (connection refused): no busy loop

    def _serve_reports(self) -> ConfigError | None:
        """Read the client's pending reports (before any partition is assigned, so no message is taken):
        ``error_cb`` runs, and consumer errors (a refused consumer group comes as one) are looked at.
        Returns the error for a refused login or access, if one was reported."""
        event = self._consumer.poll(0)
        err = event.error() if event is not None else None
        if err is not None:
            refused = self._refused(err)
            if refused is not None:
                return refused
            client_log.warning("Kafka client: %s", redact(err.str()))
        return self._refusal

    def _refused(self, err: Any, topic: str | None = None) -> ConfigError | None:
        """The :class:`ConfigError` for a Kafka error that says the broker refused this client's login or
        access (see :data:`_REFUSALS`), naming what to fix (``topic``: the topic concerned, if known);
        None for any other error."""
        if err is None:
            return None
        codes = self._ck.KafkaError
        kind = next((k for name, k in _REFUSALS.items() if getattr(codes, name, None) == err.code()), None)
        if kind is None:
            return None
        what = redact(err.str())
        user = self.config.get("sasl.username")
        who = f"user {redact(str(user))!r}" if user else "this client"
        relogin = "or log in as a user that has it (sasl.username and sasl.password in source.properties)"
        if kind == "login":
            return ConfigError(
                f"Kafka at {self.bootstrap} refused the login of {who} ({what}); fix sasl.username and sasl.password "
                "in source.properties (or the secret they reference), and sasl.mechanism and security.protocol "
                "if the broker expects others"
            )
        if kind == "topic":
            topics = [topic] if topic else self.topics
            named = f"topic {topics[0]!r}" if len(topics) == 1 else "topics " + ", ".join(map(repr, topics))
            return ConfigError(
                f"Kafka at {self.bootstrap} refused {who} access to {named} ({what}); grant it Describe and "
                f"Read on the topic in the broker's ACLs, {relogin}. Kafka says this of a topic that does not "
                "exist too: check source.topic"
            )
        if kind == "group":
            group = redact(str(self.config.get("group.id", "?")))
            return ConfigError(
                f"Kafka at {self.bootstrap} refused {who} access to consumer group {group!r} ({what}); grant it "
                f"Read on the group in the broker's ACLs, set source.group_id to a group it may use, {relogin}"
            )
        return ConfigError(
            f"Kafka at {self.bootstrap} refused {who} a cluster operation ({what}); grant it the cluster "
            f"permission in the broker's ACLs, {relogin}"
        )

    def _partitions(self) -> list[TopicPartition]:
        out = []
        for topic in self.topics:
            meta = self._retrying(functools.partial(self._consumer.list_topics, topic))
            info = meta.topics.get(topic)
            refused = self._refused(info.error, topic) if info is not None else None
            if refused is not None:
                raise refused
            if info is None or info.error is not None or not info.partitions:
                why = f" ({info.error.str()})" if info is not None and info.error is not None else ""
                raise SourceError(
                    f"Kafka topic {topic!r} does not exist on {self.bootstrap}{why}; create it or fix source.topic"
                )
            out += [(topic, p) for p in sorted(info.partitions)]
        return out

    def _start_offset(self, tp: TopicPartition, stored: int | None, committed: int, low: int, high: int) -> int:
        where = f"{tp[0]}/{tp[1]}"
        if stored is not None:
            if stored > high:
                raise SourceError(
                    f"the table's position for Kafka partition {where} is offset {stored}, beyond the partition's end "
                    f"{high}: the topic was deleted and recreated or truncated. Reading on could skip or repeat "
                    "messages; load into a new table (or a new pipeline name) to start over"
                )
            offset = stored
        elif 0 <= committed <= high:
            log.info("partition %s: no position in the table; starting from the group's committed offset %d", where, committed)
            offset = committed
        else:
            offset = low if self.start == "earliest" else high
        if offset < low:
            log.warning(
                "partition %s: offsets %d-%d were deleted by retention before they were read; continuing at %d",
                where, offset, low - 1, low,
            )
            offset = low
        return offset

    def caught_up(self) -> bool:
        """True once every partition reached the end it had when :meth:`open` ran."""
        return all(tp in self._eof or off >= self.ends[tp] for tp, off in self.positions.items())

    def stop(self) -> None:
        """Make :meth:`batches` return after the batch in progress (thread- and signal-safe)."""
        self._stop.set()

    def batches(self, max_messages: int, max_seconds: float, *, follow: bool = False) -> Generator[MessageBatch, None, None]:
        """Yield batches of at most ``max_messages`` messages, each closed after ``max_seconds``.

        Without ``follow``, ends once every partition reached its end offset of :meth:`open` (so a run
        over an idle topic yields nothing and a run never waits for new messages); raises
        :class:`TransientError` if a partition makes no progress for ``stall_seconds`` before its end.
        With ``follow``, polls on until :meth:`stop`; a batch is yielded when full or when
        ``max_seconds`` have passed since it began, and never empty. Raises :class:`TransientError` on
        a Kafka error.
        """
        if self._consumer is None:
            raise SourceError("KafkaReader.batches() before open()")
        ck = self._ck
        eof_code = ck.KafkaError._PARTITION_EOF
        consumer = self._consumer
        msg = ck.Message  # its methods are called through map: no Python frame per message
        get_value, get_key, get_topic, get_partition, get_offset, get_timestamp = (
            msg.value, msg.key, msg.topic, msg.partition, msg.offset, msg.timestamp
        )
        assigned = [ck.TopicPartition(t, p) for t, p in self.positions]
        last_progress = time.monotonic()
        while not self._stop.is_set() and (follow or not self.caught_up()):
            start = dict(self.positions)
            # Per poll, one tuple per field: a tuple of bytes, strings and ints is untracked by the garbage
            # collector at its first pass, so later full collections do not walk the batch's messages.
            polls: list[tuple[tuple[Any, ...], ...]] = []
            count = 0
            deadline = time.monotonic() + max_seconds
            while count < max_messages and not self._stop.is_set():
                if not follow and self.caught_up():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with self._polling:
                    polled = consumer.consume(min(max_messages - count, POLL_CHUNK), timeout=min(left, 0.5))
                if self._refusal is not None:  # reported by error_cb during this poll
                    raise self._refusal
                if not polled:
                    if not follow and time.monotonic() - last_progress > self.stall_seconds:
                        short = {f"{t}/{p}": (off, self.ends[(t, p)]) for (t, p), off in self.positions.items()
                                 if off < self.ends[(t, p)] and (t, p) not in self._eof}
                        raise TransientError(
                            f"Kafka at {self.bootstrap} sent nothing for {self.stall_seconds:.0f}s although partitions "
                            f"{short} (offset, end) are not at their end; rerun once the broker is healthy"
                        )
                    continue
                last_progress = time.monotonic()
                # Error events (end of partition, mostly) are rare: the common poll takes two C-speed passes.
                errors = [m for m in polled if m.error() is not None]
                if errors:
                    for m in errors:
                        self._on_event(m, eof_code)
                    polled = [m for m in polled if m.error() is None]
                if not polled:
                    continue
                # Taken apart at once, through C-level calls: the Message objects die with this poll.
                polls.append((
                    tuple(map(get_value, polled)),
                    tuple(map(get_key, polled)),
                    tuple(map(intern, map(get_topic, polled))),
                    tuple(map(get_partition, polled)),
                    tuple(map(get_offset, polled)),
                    tuple(ts if kind else None for kind, ts in map(get_timestamp, polled)) if self.timestamps else (),
                ))
                count += len(polled)
                self._advance(consumer, assigned, polled)
                del polled
            if count:
                end = dict(self.positions)
                values, keys, topics, partitions, offsets, stamps = (tuple(chain.from_iterable(f)) for f in zip(*polls, strict=True))
                del polls
                yield MessageBatch(
                    values, keys, topics, partitions, offsets, stamps if self.timestamps else None, start, end, position_state(end, self._stored)
                )

    def prefetched(self, max_messages: int, max_seconds: float, *, follow: bool, ahead: bool) -> Generator[MessageBatch, None, None]:
        """:meth:`batches`; with ``ahead`` and without ``follow`` (a run catching up) polled in a thread of
        their own while the caller decodes the batch before. Following reads in turn: a batch then closes
        with the newest messages rather than waiting behind one read ahead."""
        batches = self.batches(max_messages, max_seconds, follow=follow)
        if ahead and not follow:
            return read_ahead(batches, self.stop, 1, "kafka-poll")
        return batches

    def _advance(self, consumer: Any, assigned: list[Any], polled: list[Any]) -> None:
        """Move the positions past the messages of one poll.

        librdkafka's ``position`` is the offset after the last message handed to us, per partition: one
        call instead of a look at every message. It is taken only when the offsets it advanced by add
        up to the messages received (no gap); otherwise (compaction, transaction markers) each
        partition's last message says where it is.
        """
        moved: dict[TopicPartition, int] = {}
        for tp in consumer.position(assigned):
            key = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > self.positions[key]:
                moved[key] = tp.offset
        if sum(off - self.positions[key] for key, off in moved.items()) != len(polled):
            moved = {}
            for m in polled:
                moved[(m.topic(), m.partition())] = m.offset() + 1
        for key, off in moved.items():
            if off > self.positions[key]:
                self.positions[key] = off

    def _on_event(self, m: Any, eof_code: int) -> None:
        err = m.error()
        if err.code() == eof_code:
            tp = (m.topic(), m.partition())
            self._eof.add(tp)
            if m.offset() > self.positions.get(tp, -1):
                self.positions[tp] = m.offset()  # past trailing transaction markers
            return
        refused = self._refused(err, m.topic())
        if refused is not None:
            raise refused
        if err.fatal() or not err.retriable():
            raise TransientError(f"Kafka at {self.bootstrap} reported {redact(err.str())}; rerun once it is fixed")
        log.warning("Kafka reported %s; retrying", redact(err.str()))

    def commit(self, position: Mapping[str, Any]) -> bool:
        """Commit ``position`` as the consumer group's offsets (a hint for tools and for tables without a
        position). Returns False (and logs) if Kafka refuses: the table's position stays authoritative."""
        if self._consumer is None:
            return False
        ck = self._ck
        offsets = [ck.TopicPartition(t, p, off) for (t, p), off in position_offsets(position).items() if t in self.topics]
        if not offsets:
            return False
        try:
            with self._polling:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except ck.KafkaException as e:
            log.warning("could not commit consumer-group offsets (a hint only; the table keeps the position): %s", redact(str(e)))
            return False
        return True

    def lag(self, position: Mapping[str, Any]) -> dict[str, dict[int, int]]:
        """The messages beyond ``position`` (a batch's) per topic and partition of this reader: each
        partition's high watermark as the consumer last saw it, minus the offset ``position`` holds for it
        (never below 0). The watermarks are those librdkafka keeps from its fetch responses (no request to
        the broker: cheap, and safe while another thread polls); a partition not fetched yet (or read by an
        engine) takes its end when :meth:`open` ran. Empty when the reader is not open."""
        consumer, ck = self._consumer, self._ck
        if consumer is None:
            return {}
        at = position_offsets(position)
        out: dict[str, dict[int, int]] = {}
        for tp, end in self.ends.items():
            if tp not in at:
                continue
            try:
                high = int(consumer.get_watermark_offsets(ck.TopicPartition(*tp), cached=True)[1])
            except (ck.KafkaException, RuntimeError):  # a partition the client forgot, a consumer closed meanwhile
                high = -1
            out.setdefault(tp[0], {})[tp[1]] = max((high if high >= 0 else end) - at[tp], 0)
        return out

    def _on_client_error(self, err: Any) -> None:
        """librdkafka's error callback: it retries by itself and calls this on every failed attempt (from
        inside a poll or consume of this consumer). A refused login or access is kept: the read ends with
        it at the next poll, since librdkafka would retry it forever."""
        self._client_error = redact(err.str())
        if self._refusal is None:
            self._refusal = self._refused(err)
        client_log.warning("Kafka client: %s", self._client_error)

    def close(self) -> None:
        """Leave the broker; safe to call twice."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as e:  # closing must not hide the error that ended the run
                log.warning("closing the Kafka consumer failed: %s", e)



# ------------------------------------------------------------------------------------ JSON decoding


_TS_OR_DATE = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?\s*$"
_INT64_LIMIT = float(1 << 63)


def _json_native(t: pa.DataType) -> pa.DataType:
    """The type to ask pyarrow's JSON parser for a column typed ``t``. It refuses (and the batch falls back
    to the record path) any value of another JSON kind, and a decimal that would lose digits."""
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_boolean(t):
        return pa.bool_()
    if pa.types.is_decimal(t):
        return t  # parsed from the number's text, exactly
    return pa.string()  # text, dates, timestamps, binary: typed by the strict converters


@dataclass
class Decoded:
    """Rows decoded from a batch: ``data``, raw text and coordinates per row, rejected messages, and
    ``index``: the message each row came from (None when row i is message i)."""

    data: pa.Table
    raw: Sequence[str]
    coords: Sequence[str]
    rejected: list[Rejected]
    index: list[int] | None


class JsonDecoder:
    """Decodes message values holding JSON objects into typed Arrow rows, as JSON Lines files are.

    Column types: the table's (``schema``), then those learned from earlier batches of this run, else
    inferred from the values. A fast path parses a whole batch with pyarrow's JSON reader and casts it
    strictly; a batch it cannot prove equal to the record-by-record path (a bad record, a value of an
    unexpected kind, a new column that may hold dates) is decoded record by record instead.
    """

    def __init__(self) -> None:
        self.learned: dict[str, pa.DataType] = {}

    def types(self, schema: pa.Schema | None) -> dict[str, pa.DataType]:
        types = {f.name: f.type for f in schema} if schema is not None else {}
        types.update({k: v for k, v in self.learned.items() if k not in types})
        return types

    def decode(self, values: Sequence[bytes | None], coord: Callable[[int], str], schema: pa.Schema | None) -> Decoded:
        """Decode ``values``; ``coord(i)`` names message ``i`` for the quarantine."""
        types = self.types(schema)
        fast = self._fast(values, coord, types)
        out = fast if fast is not None else self._slow(values, coord, types)
        for f in out.data.schema:
            self.learned.setdefault(f.name, f.type)
        return out

    def _slow(self, values: Sequence[bytes | None], coord: Callable[[int], str], types: Mapping[str, pa.DataType]) -> Decoded:
        rows: list[dict[str, Any]] = []
        raw: list[str] = []
        coords: list[str] = []
        rejected: list[Rejected] = []
        index: list[int] = []
        for i, value in enumerate(values):
            where = coord(i)
            if value is None:
                rejected.append(Rejected("", where, "decode", "decode: the message has no value (a tombstone)"))
                continue
            before = len(rows)
            decode_json_line(value, where, rows, raw, coords, rejected)
            if len(rows) > before:
                index.append(i)
        table, bad = records_to_table(rows, types)
        data, raw, coords, rejected = split_bad(table, raw, coords, rejected, bad)
        if bad:
            index = [m for k, m in enumerate(index) if k not in bad]
        return Decoded(data, raw, coords, rejected, index)

    def _fast(self, values: Sequence[bytes | None], coord: Callable[[int], str], types: Mapping[str, pa.DataType]) -> Decoded | None:
        import pyarrow.json as pj

        n = len(values)
        if not n:
            return None
        # Every value must start an object, so each gives at least one row (or a parse error): with the
        # count check below, this proves that row i is message i.
        for v in values:
            if v is None or v[:1] != b"{":
                return None
        explicit = {name: _json_native(t) for name, t in types.items()}
        parse = pj.ParseOptions(
            explicit_schema=pa.schema(list(explicit.items())) if explicit else None,
            unexpected_field_behavior="infer",
        )
        try:
            import io

            # One thread: the same work costs ~15% more CPU on two, which the broker and the writer need.
            read = pj.ReadOptions(use_threads=False, block_size=4 << 20)
            parsed = pj.read_json(io.BytesIO(b"\n".join(values)), read_options=read, parse_options=parse)  # type: ignore[arg-type]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            return None
        if parsed.num_rows != n:
            return None
        cols: dict[str, pa.Array] = {}
        bad: dict[int, str] = {}
        for name in parsed.column_names:
            col = parsed.column(name).combine_chunks()
            src = col.type
            # NaN/Infinity are not JSON (the record path refuses the record); integers past 64 bits were
            # read as doubles here but are integers there.
            if (
                pa.types.is_floating(src)
                and col.null_count < n
                and (not pc.all(pc.is_finite(col)).as_py() or pc.max(pc.abs(col)).as_py() >= _INT64_LIMIT)
            ):
                return None
            # pyarrow checks a decimal's digits as written, not once scaled: 100000000 passes for decimal(10,2).
            if pa.types.is_decimal(src) and col.null_count < n:
                bounds = pc.min_max(col).as_py()
                limit = decimal.Decimal(10) ** (src.precision - src.scale)
                if bounds["max"] >= limit or bounds["min"] <= -limit:
                    return None
            target = types.get(name)
            if target is None:
                if pa.types.is_null(src):
                    target = pa.string()
                elif pa.types.is_integer(src) or pa.types.is_floating(src) or pa.types.is_boolean(src):
                    target = src
                elif pa.types.is_string(src):
                    if pc.any(pc.match_substring_regex(col, _TS_OR_DATE)).as_py():
                        return None  # the record path may type this new column as a date or a timestamp
                    target = src
                else:
                    return None  # timestamps, objects, arrays: as the record path types them
            elif src != explicit[name] and not pa.types.is_null(src):
                return None
            cols[name] = cast_column(name, col, target, bad)
        data = pa.table(cols) if cols else pa.table({"_empty": pa.nulls(n)}).drop(["_empty"])

        def raw_of(i: int) -> str:
            v = values[i]
            return v.decode("utf-8") if v is not None else ""

        if not bad:
            return Decoded(data, _Lazy(n, raw_of), _Lazy(n, coord), [], None)
        keep = [i for i in range(n) if i not in bad]
        rejected = [Rejected(raw_of(i), coord(i), "type", bad[i]) for i in sorted(bad)]
        data = data.take(pa.array(keep, pa.int64()))
        return Decoded(data, _Lazy(len(keep), raw_of, keep), _Lazy(len(keep), coord, keep), rejected, keep)


# ------------------------------------------------------------------------------------ the source


class _ConsumerFields(Protocol):
    bootstrap_servers: str
    group_id: str | None
    properties: dict[str, str]


def consumer_config(cfg: _ConsumerFields, pipeline: str, where: str, base_dir: Path | None = None) -> dict[str, str]:
    """The librdkafka settings of a source config with ``bootstrap_servers``, ``group_id`` and
    ``properties`` (the ``kafka`` source's; a ``debezium`` source's too), secret references resolved
    (a relative ``${file:...}`` against ``base_dir``, the project folder) and registered for redaction.
    The group defaults to ``icefield.<pipeline>``. Raises :class:`ConfigError` for a property that
    conflicts with a source field."""
    conf: dict[str, str] = {}
    for key, value in cfg.properties.items():
        if key in ("bootstrap.servers", "group.id"):
            field_name = "bootstrap_servers" if key == "bootstrap.servers" else "group_id"
            raise ConfigError(f"{where}.properties.{key}: set source.{field_name} instead")
        resolved = resolve(value, where=f"{where}.properties.{key}", base_dir=base_dir)
        if _SECRET_KEYS.search(key):
            register_secret(resolved)
        conf[key] = resolved
    conf["bootstrap.servers"] = resolve(cfg.bootstrap_servers, where=f"{where}.bootstrap_servers", base_dir=base_dir)
    conf["group.id"] = cfg.group_id or f"icefield.{pipeline}"
    conf.setdefault("client.id", f"icefield.{pipeline}")
    return conf


class KafkaSource(Source):
    """JSON messages of Kafka topics (see the module docs). Batches close at the pipeline's
    ``batch_size`` messages or after ``source.max_wait_seconds``."""

    capabilities = SourceCapabilities(incremental=True, streaming=True)

    def __init__(self, pipeline: PipelineConfig, project: Project, batch_size: int) -> None:
        assert isinstance(pipeline.source, KafkaSourceConfig)
        self.cfg = pipeline.source
        self.pipeline = pipeline.name
        self.where = f"pipeline {pipeline.name!r}: source"
        self.batch_size = batch_size
        self.decoder = JsonDecoder()
        self.read_ahead = project.config.read_ahead > 0
        self.root = project.root
        self.reader: KafkaReader | None = None
        self._stop_requested = False
        self._engine: Any = None  # an icefield engine that reads and decodes the messages itself (read_with)
        self._engine_reads = project.config.spark.read_sources
        self.control = pipeline.target.delete_column

    def _open(self, position: dict[str, Any] | None) -> KafkaReader:
        conf = consumer_config(self.cfg, self.pipeline, self.where, base_dir=self.root)
        reader = self.reader = KafkaReader(conf, self.cfg.topic_names, start=self.cfg.start, timestamps=self.cfg.metadata_columns)
        if self._stop_requested:
            reader.stop()
        reader.open(position)
        return reader

    def read(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Batches up to the end offsets the topics had when the read began; then the read ends."""
        return self._batches(position, schema, follow=False)

    def follow(self, position: dict[str, Any] | None, schema: pa.Schema | None) -> Iterator[SourceBatch]:
        """Batches for as long as the source is not stopped; each closes at ``batch_size`` messages or
        ``max_wait_seconds`` after it began (the commit interval)."""
        return self._batches(position, schema, follow=True)

    def _batches(self, position: dict[str, Any] | None, schema: pa.Schema | None, follow: bool) -> Iterator[SourceBatch]:
        if self._engine is not None and not follow and schema is not None and not self.cfg.metadata_columns:
            yield from self._engine_batches(position, schema, self.control)
            return
        reader = self._open(position)
        if schema is not None and self.cfg.metadata_columns:
            schema = pa.schema([f for f in schema if f.name not in METADATA_COLUMNS])  # not in the messages
        with closing(reader.prefetched(self.batch_size, self.cfg.max_wait_seconds, follow=follow, ahead=self.read_ahead)) as polled:
            yield from self._decoded(polled, schema)

    def _decoded(self, polled: Iterator[MessageBatch], schema: pa.Schema | None) -> Iterator[SourceBatch]:
        for mb in polled:
            decoded = self.decoder.decode(mb.values, mb.coords, schema)
            data = decoded.data
            if self.cfg.metadata_columns:
                data = _with_metadata(data, mb, decoded.index)
            yield SourceBatch(
                data=data,
                position=mb.position,
                key=mb.key,
                raw=decoded.raw,
                coords=decoded.coords,
                rejected=decoded.rejected,
                coord_label=",".join(self.cfg.topic_names),
            )

    def read_with(self, engine: Any) -> None:
        """Let ``engine`` read and decode the messages (:meth:`_engine_batches`) when ``spark.read_sources`` is on."""
        if self._engine_reads:
            self._engine = engine

    def _engine_batches(self, position: dict[str, Any] | None, schema: pa.Schema, control: str | None) -> Iterator[SourceBatch]:
        """The messages up to the end offsets the topics had when the read began, read by the engine
        (:meth:`~icefield.engines.base.Engine.read_kafka`: one reader per partition) and decoded where they are
        read by this source's decoder (:func:`decode_in_engine`), in batches of about ``batch_size`` messages
        taken from every partition alike. The rows the engine hands back (a check may refuse them; a message it
        could not decode as the table is: a new field, a bad value) are decoded again here
        (:meth:`_redecode`), with this run's decoder, as a read here would decode them. Positions and batch keys
        have the form the reader's batches have."""
        reader = self._open(position)
        cur, ends = dict(reader.positions), dict(reader.ends)
        types = _with_control(schema, control)
        out = engine_schema(types)
        decode = functools.partial(decode_in_engine, types=types, out=out)
        options = java_consumer_options(reader.config)
        while True:
            active = sorted(tp for tp in cur if cur[tp] < ends[tp])
            if not active:
                return
            per = max(1, -(-self.batch_size // len(active)))
            end = {tp: min(ends[tp], cur[tp] + per) if tp in active else cur[tp] for tp in cur}
            frame = self._engine.read_kafka(options, {tp: (cur[tp], end[tp]) for tp in active}, decode, out)
            batch = SourceBatch(
                data=schema.empty_table(),
                position=position_state(end, position),
                key=range_key(cur, end),
                coord_label=",".join(self.cfg.topic_names),
                frame=frame,
                redecode=functools.partial(self._redecode, schema=schema),
            )
            yield batch
            cur = end

    def _redecode(self, batch: SourceBatch, rows: pa.Table, schema: pa.Schema) -> None:
        """Decode here the messages of ``rows`` (the engine's columns :data:`VALUE_COLUMN` and the coordinates)."""
        values = rows.column(VALUE_COLUMN).to_pylist()
        topics, partitions, offsets = (rows.column(c).to_pylist() for c in (TOPIC_COLUMN, PARTITION_COLUMN, OFFSET_COLUMN))
        decoded = self.decoder.decode(values, lambda i: f"{topics[i]}/{partitions[i]}/{offsets[i]}", schema)
        batch.data, batch.raw, batch.coords = decoded.data, decoded.raw, decoded.coords
        batch.rejected = [*batch.rejected, *decoded.rejected]

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Commit the consumer-group offsets of ``position`` (after the Iceberg commit; a hint only)."""
        if self.reader is not None:
            self.reader.commit(position)

    def lag(self, position: dict[str, Any]) -> dict[str, dict[int, int]] | None:
        """Messages beyond ``position`` per topic and partition (:meth:`KafkaReader.lag`)."""
        return self.reader.lag(position) if self.reader is not None else None

    def stop(self) -> None:
        self._stop_requested = True
        if self.reader is not None:
            self.reader.stop()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


METADATA_COLUMNS = ("_kafka_topic", "_kafka_partition", "_kafka_offset", "_kafka_timestamp")

# ------------------------------------------------------------------------------------ decoding in an engine

VALUE_COLUMN, TOPIC_COLUMN, PARTITION_COLUMN, OFFSET_COLUMN = (
    "__icefield_value", "__icefield_topic", "__icefield_partition", "__icefield_offset",
)
"""The columns a frame of messages keeps besides the table's: each message's value and coordinates."""


_JAVA_SAME = ("bootstrap.servers", "security.protocol", "client.id", "isolation.level", "client.rack")
_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def java_consumer_options(config: Mapping[str, Any]) -> dict[str, str]:
    """The settings of a librdkafka consumer ``config`` that Kafka's Java client (an engine's Kafka reader)
    takes, under its names: the servers, the security protocol, the SASL login (``sasl.username`` and
    ``sasl.password`` become ``sasl.jaas.config`` for PLAIN and SCRAM), a PEM CA file as the trust store.
    librdkafka's own tuning settings are left out. Raises :class:`ConfigError` for a SASL mechanism the
    translation does not know (OAUTHBEARER, GSSAPI: read such a source with ``spark.read_sources: false``)."""
    out = {k: str(config[k]) for k in _JAVA_SAME if k in config}
    mechanism = config.get("sasl.mechanism", config.get("sasl.mechanisms"))
    if mechanism is not None:
        mechanism = str(mechanism).upper()
        module = _JAAS_MODULES.get(mechanism)
        if module is None:
            raise ConfigError(
                f"an engine cannot log in to Kafka with sasl.mechanism {mechanism!r} (it translates PLAIN and SCRAM "
                "only); set spark: {read_sources: false} in icefield.yaml to read this source in the icefield process"
            )
        out["sasl.mechanism"] = mechanism
        user, password = (str(config.get(k, "")).replace("\\", "\\\\").replace('"', '\\"') for k in ("sasl.username", "sasl.password"))
        out["sasl.jaas.config"] = f'{module} required username="{user}" password="{password}";'
    if "ssl.ca.location" in config:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = str(config["ssl.ca.location"])
    return out


def _with_control(schema: pa.Schema, control: str | None) -> pa.Schema:
    """``schema`` with the delete flag ``control`` (a boolean) when the batch carries one."""
    if control is None or control in schema.names:
        return schema
    return schema.append(pa.field(control, pa.bool_()))


def _plain(t: pa.DataType) -> pa.DataType:
    """``t`` with 32-bit offsets (string, binary, list), as Spark takes Arrow data by default."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain(f.type), f.nullable) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_plain(t.key_type), _plain(t.item_type))
    return t


def engine_schema(types: pa.Schema) -> pa.Schema:
    """The Arrow schema of a frame of decoded messages: the columns ``types`` (as an engine takes them), the
    mark of the rows to decode again here (:data:`icefield.engines.base.SUSPECT_COLUMN`), each message's value
    and coordinates."""
    from icefield.engines.base import SUSPECT_COLUMN

    fields = [pa.field(f.name, _plain(f.type)) for f in types]
    return pa.schema([
        *fields,
        pa.field(SUSPECT_COLUMN, pa.bool_()),
        pa.field(VALUE_COLUMN, pa.binary()),
        pa.field(TOPIC_COLUMN, pa.string()),
        pa.field(PARTITION_COLUMN, pa.int32()),
        pa.field(OFFSET_COLUMN, pa.int64()),
    ])


def decode_in_engine(batches: Iterator[pa.RecordBatch], types: pa.Schema, out: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Decode Kafka messages (Arrow batches of ``topic``, ``partition``, ``offset``, ``value``) where an engine
    reads them (Spark's Python workers), with this source's decoder and the table's column types ``types``.

    A message that decodes to one row of the table's columns is a row of the result (typed as ``out``). Any
    other (a value the decoder refuses, a field the table does not have, several rows) is marked
    (:data:`icefield.engines.base.SUSPECT_COLUMN`, its columns null) for the source to decode again where the
    run is (:meth:`KafkaSource._redecode`): the quarantine and schema evolution stay the run's."""
    known = set(types.names)
    fields = [f for f in out if f.name in known]
    for rb in batches:
        values = rb.column("value").to_pylist()
        topics, partitions, offsets = (rb.column(c).to_pylist() for c in ("topic", "partition", "offset"))
        where = [f"{t}/{p}/{o}" for t, p, o in zip(topics, partitions, offsets, strict=True)]
        decoded = JsonDecoder().decode(values, where.__getitem__, types)
        data = decoded.data
        index = decoded.index if decoded.index is not None else list(range(data.num_rows))
        ok = [True] * data.num_rows
        for name in data.column_names:
            if name not in known:
                ok = [a and b for a, b in zip(ok, pc.is_null(data.column(name)).to_pylist(), strict=True)]
        count: dict[int, int] = {}
        for m in index:
            count[m] = count.get(m, 0) + 1
        row_of: list[int | None] = [None] * len(values)
        for k, m in enumerate(index):
            if ok[k] and count[m] == 1:
                row_of[m] = k
        take = pa.array(row_of, pa.int64())
        columns = [
            data.column(f.name).take(take).cast(f.type) if f.name in data.column_names else pa.nulls(len(values), f.type)
            for f in fields
        ]
        suspect = pa.array([r is None for r in row_of], pa.bool_())
        columns += [suspect, rb.column("value"), rb.column("topic").cast(pa.string()), rb.column("partition").cast(pa.int32()),
                    rb.column("offset").cast(pa.int64())]
        yield pa.RecordBatch.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns], schema=out)


def _with_metadata(data: pa.Table, mb: MessageBatch, index: list[int] | None) -> pa.Table:
    def pick(xs: Sequence[Any]) -> Sequence[Any]:
        return xs if index is None else [xs[i] for i in index]

    topics, partitions, offsets = pick(mb.topics), pick(mb.partitions), pick(mb.offsets)
    stamps = pick(mb.timestamps) if mb.timestamps is not None else [None] * len(offsets)
    columns = {
        "_kafka_topic": pa.array(topics, pa.string()),
        "_kafka_partition": pa.array(partitions, pa.int32()),
        "_kafka_offset": pa.array(offsets, pa.int64()),
        "_kafka_timestamp": pa.array(stamps, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
    }
    for name, arr in columns.items():
        if name in data.column_names:
            raise SourceError(f"the messages already have a field {name!r}; turn source.metadata_columns off")
        data = data.append_column(name, arr)
    return data
