"""The one commit path: every commit icefield makes to an Iceberg table goes through this module.

Batches, tombstones, the quarantine, write-audit-publish, gate results, quarantine replay, compaction,
expiry and schema changes all commit through :func:`commit`, which runs a commit *attempt* on a freshly
loaded table until it lands:

- a **conflict** (pyiceberg's ``CommitFailedException`` or ``ValidationException``: nothing landed) replans:
  the table is loaded again and the attempt rebuilds its change on it, after an exponential backoff with
  jitter, within a bound of attempts and seconds (:class:`Retry`); past it, :class:`CommitConflictError`;
- an **unknown outcome** (``CommitStateUnknownException``, a lost response, an I/O or database error: the
  swap may or may not have happened) is resolved by loading the table and looking for the commit, by its
  batch id (:func:`batch_landed`), never by deleting files; when it is not there, or the attempt has no way
  to look, :class:`TransientError` (exit 75): a rerun resumes;
- an icefield error raised by the attempt (a refused schema, a branch that moved, a position another run
  moved) passes unchanged.

Each attempt commits with :func:`commit_transaction`, which turns pyiceberg's own retries off: they
re-apply a change past every check icefield made before (an append another process committed meanwhile
would land twice). See ``docs/architecture.md``, section "The write path".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from icefield.errors import CommitConflictError, IcefieldError, TransientError
from icefield.iceberg.history import MAIN, find_batch
from icefield.iceberg.tables import refusal, refused, unreachable

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

COMMIT_NUM_RETRIES = "commit.retry.num-retries"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Retry:
    """How long a commit keeps replanning after conflicts: at most ``attempts`` attempts and about
    ``seconds`` seconds, waiting ``delay`` seconds after the first conflict and twice as long after each
    next one, up to ``max_delay`` (each wait drawn between half and one and a half times that, so that
    writers that conflicted once do not meet again)."""

    attempts: int
    seconds: float = 300.0
    delay: float = 0.05
    max_delay: float = 1.0


def commit(
    what: str,
    load: Callable[[], T],
    attempt: Callable[[T], R],
    *,
    retry: Retry,
    table: T | None = None,
    landed: Callable[[T], R | None] | None = None,
    on_conflict: Callable[[], None] | None = None,
    replan: tuple[type[IcefieldError], ...] = (),
    advice: str = "rerun",
) -> R:
    """Run ``attempt`` on the table until its commit lands, and return what it returns.

    ``load`` loads the table afresh (each attempt after the first, and to resolve an unknown outcome);
    ``table``, when given, is the table as the caller just loaded it, for the first attempt. ``attempt``
    builds its change on the table it is given and commits it with :func:`commit_transaction` (it may also
    return without committing, e.g. when the change is already there). ``landed`` looks at a freshly
    loaded table after an unknown outcome and returns the attempt's result when its commit is there, None
    when not (:func:`batch_landed` looks for a batch id). ``on_conflict`` runs after each conflict (e.g.
    deletes the files the failed attempt wrote: a conflict guarantees nothing of it landed). ``replan``
    names icefield errors an attempt raises when the table moved under it before anything landed (e.g. an
    audit branch whose ``main`` moved): they are conflicts too. ``what`` names the commit in logs and errors
    (``batch 1a2b of raw.events``) and ``advice`` ends them.

    Raises :class:`CommitConflictError` when conflicts outlast ``retry``, :class:`TransientError` when the
    outcome stays unknown, and the icefield errors of ``attempt`` as they are.
    """
    from pyiceberg.exceptions import CommitFailedException, CommitStateUnknownException, ValidationException
    from sqlalchemy.exc import DBAPIError

    started = time.perf_counter()
    delay = retry.delay
    for n in range(1, retry.attempts + 1):
        try:
            return attempt(table if n == 1 and table is not None else load())
        except IcefieldError as e:
            if not isinstance(e, replan):
                raise
            conflict: Exception = e
        except (CommitFailedException, ValidationException) as e:
            conflict = e
        except (OSError, CommitStateUnknownException, DBAPIError) as e:
            return _resolve(what, load, landed, e, advice)
        except Exception as e:
            if not unreachable(e):  # a catalog client's own connection error (a Hive Metastore's Thrift)
                raise
            return _resolve(what, load, landed, e, advice)
        # Nothing landed (pyiceberg guarantees it for its two): replan on the new snapshot.
        log.info("%s conflicted (attempt %d of %d): %s", what, n, retry.attempts, conflict)
        if on_conflict is not None:
            on_conflict()
        if n == retry.attempts or time.perf_counter() - started > retry.seconds:
            raise CommitConflictError(
                f"{what} could not be committed: each of {n} attempts in {time.perf_counter() - started:.0f} s met a "
                f"concurrent commit; {advice}"
            ) from conflict
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, retry.max_delay)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _resolve(what: str, load: Callable[[], T], landed: Callable[[T], R | None] | None, error: Exception, advice: str) -> R:
    """The result of a commit whose outcome is unknown when it landed (looked for with ``landed``), else
    :class:`TransientError`. Looks, never deletes."""
    from pyiceberg.exceptions import CommitStateUnknownException
    from sqlalchemy.exc import DBAPIError

    why = f"the object store is unreachable ({error})" if unreachable(error) else str(error)
    if refused(error):
        # Refused before the catalog moved (files are written first): nothing landed, and no retry helps.
        raise refusal(f"{what} failed", error) from error
    if landed is not None:
        try:
            result = landed(load())
        except (OSError, CommitStateUnknownException, DBAPIError, TransientError) as e:
            raise TransientError(f"{what} failed: {why}; whether it landed is unknown (looking failed too: {e}); {advice}") from error
        if result is not None:
            log.warning("%s reported %r but landed", what, error)
            return result
    raise TransientError(f"{what} failed: {why}; it stays pending, {advice}") from error


def batch_landed(batch_id: str, result: Callable[[int], R], ref: str = MAIN) -> Callable[[Table | None], R | None]:
    """A ``landed`` check for :func:`commit`: ``result(snapshot_id)`` when the history of ``ref`` holds the
    commit of ``batch_id`` (its summary's ``icefield.batch-id``), None when not."""

    def landed(table: Table | None) -> R | None:
        snap = find_batch(table, batch_id, ref) if table is not None else None
        return result(snap) if snap is not None else None

    return landed


def commit_transaction(tx: Any) -> Table:
    """Commit ``tx`` once: the one way an attempt of :func:`commit` commits to Iceberg.

    pyiceberg retries a failed commit by itself when the table's ``commit.retry.num-retries`` says so: it
    refreshes the table and applies the same append again, past every check icefield made before (a batch
    another process committed meanwhile would land twice); it does so 4 times when the property is not
    set. Here it never does: a conflict raises ``CommitFailedException`` to the caller, whose replan
    reloads the table and checks again (the batch id, the position, the files a merge read). Returns the
    committed table.
    """
    table = tx._table
    metadata = table.metadata
    if metadata.properties.get(COMMIT_NUM_RETRIES) == "0":
        return tx.commit_transaction()  # type: ignore[no-any-return]
    # Only this in-memory copy says 0 (pyiceberg retries 4 times when the property is absent): the
    # table's property stays as it is, for other engines.
    once = metadata.model_copy(update={"properties": {**metadata.properties, COMMIT_NUM_RETRIES: "0"}})
    table.metadata = once
    try:
        return tx.commit_transaction()  # type: ignore[no-any-return]
    finally:
        if table.metadata is once:  # not committed: the table object is as it was
            table.metadata = metadata
