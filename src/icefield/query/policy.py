"""Where an access policy plugs into the query seam: each view, as it is built, may be rewritten.

A :class:`ViewPolicy` sees every table view the moment it is built (:func:`icefield.query.register_table`,
the one place icefield builds them) and may give a :class:`ViewRule` for it: column masks (a column's
values replaced by a SQL expression) and a row filter. What the view shows is then what every query over
it sees: ``icefield sql``, models, ``sql`` gates and the gates icefield compiles alike.

The policy in effect is entered by whoever runs the query (an entry point, a request of a service, a
test) with :func:`view_policy`; nothing sets one by default, and none applies then. It is a context
variable: a thread started inside ``with view_policy(...)`` sees it only when it runs in a copy of the
context (``contextvars.copy_context().run``), as icefield's own worker threads do.

A policy binds what locked connections read (:mod:`icefield.query.readonly`); unrestricted SQL
(``icefield sql --unrestricted``) sees the governed views too, but may read the data files directly.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from icefield.query.views import View

__all__ = ["ViewPolicy", "ViewRule", "current_policy", "view_policy"]


@dataclass(frozen=True)
class ViewRule:
    """How a policy changes one table's view. ``columns`` maps view column names (as the view names
    them, :attr:`View.columns`) to the SQL expression that replaces their values (a mask: ``'***'``,
    ``left(email, 2)``, ``NULL``); ``where`` is a SQL condition the view's rows must meet (a row
    filter). Both are one SQL expression over the view's own columns, without subqueries."""

    columns: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None


class ViewPolicy(Protocol):
    """Decides, view by view, what a query may see of a table."""

    def rule(self, view: View) -> ViewRule | None:
        """The rule for ``view`` (its table's identifier, snapshot and columns), or None to leave it as
        the table is."""


_POLICY: contextvars.ContextVar[ViewPolicy | None] = contextvars.ContextVar("icefield_view_policy", default=None)


def current_policy() -> ViewPolicy | None:
    """The policy in effect (:func:`view_policy`), or None."""
    return _POLICY.get()


@contextmanager
def view_policy(policy: ViewPolicy | None) -> Iterator[None]:
    """Apply ``policy`` to every view built inside the ``with`` block (None: no policy), and restore the
    previous one after it."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)
