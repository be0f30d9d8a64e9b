"""Tables by name, and the object store under them (a local folder, S3, ...).

A table is named ``namespace.table`` (:func:`table_identifier`). Loading one reads its metadata from the
object store: a store that cannot be reached (refused or dropped connections, timeouts, names that do not
resolve) fails with :class:`~icefield.errors.TransientError` (exit 75), as an unreachable catalog server
does, since the same command may succeed later (:func:`reaching_storage`); other storage errors (a missing
file, a refused permission) are not transient. See ``docs/architecture.md``, section "Errors".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from icefield.errors import ConfigError, StorageRefusedError, TransientError

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

# pyarrow's S3 filesystem (the AWS SDK's "NETWORK_CONNECTION", curl's codes), fsspec/botocore, sockets.
_UNREACHABLE = re.compile(
    r"NETWORK_CONNECTION|could not connect|couldn't connect|connection refused|connection reset|connection aborted|"
    r"failed to connect|timed out|no route to host|network is unreachable|could not resolve host|"
    r"name or service not known|temporary failure in name resolution|curlCode: (6|7|28)\b",
    re.IGNORECASE,
)
# An S3 server's answers that no retry changes: the credentials or the bucket are wrong, or the account
# may not do this (a read-only account writing). pyarrow names the AWS error code in its message.
_REFUSED = re.compile(
    r"ACCESS_DENIED|AccessDenied|Access Denied|INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|"
    r"SignatureDoesNotMatch|NO_SUCH_BUCKET|NoSuchBucket|AllAccessDisabled|AccountProblem|"
    r"HTTP response code: 403|HTTP status 403",
)
_NETWORK_ERRORS = (
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError", "ServerTimeoutError",
    "TTransportException",  # a Hive Metastore's Thrift connection dropped
)


def table_identifier(name: str) -> tuple[str, ...]:
    """``(namespace, table)`` of a table name ``namespace.table``; :class:`ConfigError` for any other form."""
    parts = tuple(name.split("."))
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{name!r} is not a table name: write it as namespace.table, e.g. raw.events (`icefield tables` lists them)")
    return parts


def load_table(catalog: Catalog, identifier: tuple[str, ...]) -> Table | None:
    """The table ``identifier``, or None when the catalog has none; :class:`TransientError` when its
    metadata is on an object store that cannot be reached."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    with reaching_storage(f"loading table {'.'.join(identifier)}"):
        try:
            return catalog.load_table(identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None


def ensure_namespace(catalog: Catalog, namespace: tuple[str, ...]) -> None:
    """Create ``namespace`` unless it exists. Two runs creating it at once both succeed: the SQL catalog
    reports the loser's insert as a unique-key violation (not as "already exists"), so a failed creation
    is accepted when the namespace is there afterwards, and raised as it is when not."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError
    from sqlalchemy.exc import IntegrityError

    try:
        catalog.create_namespace_if_not_exists(namespace)
    except (NamespaceAlreadyExistsError, IntegrityError):
        if not catalog.namespace_exists(namespace):
            raise


def load_existing(catalog: Catalog, name: str) -> Table:
    """The table ``name`` (``namespace.table``); :class:`ConfigError` naming the fix when there is none
    or when ``name`` is not of that form, :class:`TransientError` when the object store is unreachable."""
    table = load_table(catalog, table_identifier(name))
    if table is None:
        raise ConfigError(f"no table {name!r} in the catalog; `icefield tables` lists them")
    return table


def unreachable(e: BaseException) -> bool:
    """True when ``e`` (or an error it was raised from) says the object store could not be reached."""
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConnectionError) or type(err).__name__ in _NETWORK_ERRORS:
            return True
        if isinstance(err, OSError) and _UNREACHABLE.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def refused(e: BaseException) -> bool:
    """True when ``e`` (or an error it was raised from) is the object store refusing the request for good:
    access denied, unknown access key, bad signature, no such bucket."""
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and _REFUSED.search(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def refusal(what: str, e: BaseException) -> StorageRefusedError:
    """The :class:`StorageRefusedError` for ``what`` (``writing batch 1a2b of raw.events``) refused with ``e``."""
    return StorageRefusedError(
        f"{what}: the object store refused it ({e}); the storage credentials may not do this here: give an "
        "account that may (storage.access_key / storage.secret_key), or fix the warehouse's bucket"
    )


@contextmanager
def reaching_storage(what: str) -> Iterator[None]:
    """Run the block; an error saying the object store cannot be reached becomes :class:`TransientError`,
    one saying it refused the request (:func:`refused`) :class:`StorageRefusedError`, each naming what was
    being done (``what``), its cause kept. Other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if refused(e):
            raise refusal(what, e) from e
        if not unreachable(e):
            raise
        raise TransientError(f"{what}: the object store is unreachable ({e}); retry later") from e
