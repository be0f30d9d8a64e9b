"""The shop's support desk API for the demo: the support tickets of the shop's customers, served over HTTP.

:class:`SupportApi` is a :class:`~icefield.examples.api.FakeApi` whose records are tickets (``id``,
``customer_id``, ``subject``, ``status``, ``priority``, ``channel``, ``tags``, ``created_at``,
``updated_at``), deterministic from the seed, paginated by page number (``?page=N&per_page=K``, the records
at ``data.items``), filtered by ``since=`` (inclusive, on ``updated_at``), behind a bearer token and rate
limited (429 with ``Retry-After`` past ``rate_limit`` requests a second). It listens on a free port of
127.0.0.1 in a daemon thread; the demo starts it, lands it with the pipeline ``api/support_tickets.yaml``
and stops it when it ends.
"""

from __future__ import annotations

import calendar
import random
import time
from typing import Any

from icefield.examples.api import EPOCH, ApiSettings, FakeApi, stamp

TOKEN_FILE = "secrets/support_api_token"
"""The file (under the project) holding the API's bearer token: the pipeline reads it as ``${file:...}``."""

ADDRESS_ENV = "SHOP_SUPPORT_API_ADDRESS"
"""The environment variable holding the API's ``host:port`` (its port is chosen when it starts); the pipeline's
``base_url`` is ``http://${env:SHOP_SUPPORT_API_ADDRESS}``."""

PIPELINE_FILE = "api/support_tickets.yaml"
"""The pipeline that lands the API, under the project. It is not under ``pipelines/``: the API lives only as
long as ``icefield demo``, so ``icefield run`` of the demo's folder leaves it out."""

_SUBJECTS = ("Where is my order?", "Refund request", "Wrong size delivered", "Payment failed", "Change my address", "Damaged parcel")
_STATUSES = ("new", "open", "pending", "solved")
_PRIORITIES = ("low", "normal", "high", "urgent")
_CHANNELS = ("email", "chat", "phone")
_TAGS = ("shipping", "billing", "returns", "vip", "complaint")


def make_tickets(first: int, n: int, customers: int, rng: random.Random, at: int) -> list[dict[str, Any]]:
    """``n`` tickets with ids ``first``.. of customers 1..``customers``; two tickets share each ``updated_at``
    second (from second ``at``), so the incremental cursor meets ties."""
    out = []
    for k in range(n):
        opened = at + k // 2 * 60
        out.append(
            {
                "id": first + k,
                "customer_id": rng.randrange(1, customers + 1),
                "subject": rng.choice(_SUBJECTS),
                "status": rng.choice(_STATUSES),
                "priority": rng.choice(_PRIORITIES),
                "channel": rng.choice(_CHANNELS),
                "tags": rng.sample(_TAGS, k=rng.randrange(0, 3)),
                "created_at": stamp(opened - rng.randrange(0, 3600)),
                "updated_at": stamp(opened),
            }
        )
    return out


class SupportApi(FakeApi):
    """The support tickets of ``customers`` customers: ``tickets`` of them at first (a pure function of
    ``seed``), ``page_size`` a page, at most ``rate_limit`` requests a second, ``token`` as bearer token.
    :meth:`add` opens new tickets and :meth:`update` (of :class:`FakeApi`) changes some, each with a newer
    ``updated_at``; :meth:`expected` is every ticket by id as the API holds it."""

    def __init__(self, customers: int, token: str, seed: int = 7, tickets: int = 240, page_size: int = 50, rate_limit: int = 20) -> None:
        super().__init__(ApiSettings(records=0, seed=seed, page_size=page_size, auth="bearer", token=token, rate_limit=rate_limit, customers=0))
        self.customers = customers
        self._rng = random.Random(f"support-{seed}")
        self.records = make_tickets(1, tickets, customers, self._rng, at=0)

    def add(self, n: int, at: int | None = None) -> list[int]:
        """Open ``n`` new tickets, ``updated_at`` just after the newest (or at second ``at``); returns their ids."""
        with self.lock:
            newest = max((r["updated_at"] for r in self.records), default=stamp(0))
            extra = make_tickets(len(self.records) + 1, n, self.customers, self._rng, at=0)
            for r in extra:
                r["updated_at"] = stamp(at) if at is not None else _second_after(newest)
                r["created_at"] = r["updated_at"]
            self.records.extend(extra)
            self._sorted = None
            return [r["id"] for r in extra]


def _second_after(value: str) -> str:
    """The :func:`stamp` text one second after ``value`` (a :func:`stamp` text)."""
    return stamp(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - EPOCH + 1)
