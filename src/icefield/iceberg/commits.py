"""The one way icefield commits a transaction to Iceberg (every writer, maintenance and publish uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyiceberg.table import Table

COMMIT_NUM_RETRIES = "commit.retry.num-retries"


def commit_transaction(tx: Any) -> Table:
    """Commit ``tx`` once: the one way icefield commits to Iceberg.

    pyiceberg retries a failed commit by itself when the table's ``commit.retry.num-retries`` says so: it
    refreshes the table and applies the same append again, past every check icefield made before (a batch
    another process committed meanwhile would land twice); it does so 4 times when the property is not
    set. Here it never does: a conflict raises ``CommitFailedException`` to the caller, whose own retry
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
