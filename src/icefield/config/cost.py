"""The ``cost:`` block of ``icefield.yaml``: what a GB-month of storage costs, per storage class.

``icefield cost`` (:mod:`icefield.iceberg.cost`) prices the bytes of each table with it::

    cost:
      currency: USD
      prices: {standard: 0.023, infrequent: 0.0125}   # per GB-month (GB = 2^30 bytes), per storage class
      storage_class: standard                          # the class of the warehouse (and of any other location)
      archive_class: infrequent                        # the class of every target.maintenance.archive_location
      locations: {"s3://cold-bucket/archive": infrequent}   # the class of the files under a location prefix
      small_file_bytes: 8MB                            # a data file under this size is small

Every key is optional. Without ``small_file_bytes`` a data file is small when it is under a quarter of its
table's target file size (``write.target-file-size-bytes``). Sizes are bytes or a number with ``KB``, ``MB``,
``GB``, ``TB`` (powers of 1024, as Iceberg's own settings count them; ``KiB``... are the same).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icefield.config.archive import archive_location
from icefield.errors import ConfigError

__all__ = ["DEFAULT_PRICES", "GB", "CostConfig", "parse_size"]

GB = 1024**3
"""The GB of a price per GB-month: 2^30 bytes, as cloud object stores bill."""

DEFAULT_PRICES = {"standard": 0.023}
"""S3 Standard's first tier in us-east-1, USD per GB-month: the price when the project names none."""

_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_CLASS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def parse_size(value: Any) -> int:
    """``value`` (``8MB``, ``512KB``, ``1.5GB``, ``1048576``) as a number of bytes above zero. Raises
    :class:`ConfigError` naming the value and the form to give."""
    if isinstance(value, bool):
        match = None
    elif isinstance(value, int):
        match = _SIZE.match(str(value))
    else:
        match = _SIZE.match(str(value)) if isinstance(value, (str, float)) else None
    if match is not None:
        unit = match.group(2).upper() + ("B" if match.group(2) or match.group(3) else "")
        size = float(match.group(1)) * _UNITS[unit]
        if size >= 1 and math.isfinite(size):
            return int(size)
    raise ConfigError(f"size {value!r} is not a size above zero; give bytes or a number with KB, MB, GB or TB, e.g. 8MB")


class CostConfig(BaseModel):
    """The ``cost:`` block (see the module): prices per storage class and which files are in which class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = "USD"
    prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    storage_class: str = "standard"
    archive_class: str | None = None
    locations: dict[str, str] = Field(default_factory=dict)
    small_file_bytes: int | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z$€£¥]{1,8}", v.strip()):
            raise ValueError("currency must be a short code such as USD or EUR")
        return v.strip()

    @field_validator("prices", mode="before")
    @classmethod
    def _prices(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("prices must map each storage class to its price per GB-month, e.g. {standard: 0.023}")
        for name, price in v.items():
            if not isinstance(name, str) or not _CLASS.match(name):
                raise ValueError(f"storage class {name!r} is not a name (letters, digits, '_', '-', '.'); rename it, e.g. standard")
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
                raise ValueError(
                    f"the price of storage class {name!r} is {price!r}: give a number of 0 or more, per GB-month (e.g. 0.023)"
                )
        return {k: float(p) for k, p in v.items()}

    @field_validator("small_file_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            return parse_size(v)
        except ConfigError as e:  # reported by pydantic with the key's path
            raise ValueError(str(e)) from None

    @field_validator("locations", mode="before")
    @classmethod
    def _locations(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("locations must map a location prefix to a storage class, e.g. {'s3://cold-bucket/archive': infrequent}")
        out = {}
        for prefix, storage_class in v.items():
            try:
                out[archive_location(str(prefix))] = storage_class
            except ConfigError as e:
                raise ValueError(str(e).replace("archive location", "location", 1)) from None
        return out

    @model_validator(mode="after")
    def _known_classes(self) -> CostConfig:
        known = ", ".join(sorted(self.prices))
        named = [("storage_class", self.storage_class), ("archive_class", self.archive_class)]
        named += [(f"locations[{prefix!r}]", c) for prefix, c in self.locations.items()]
        for key, storage_class in named:
            if storage_class is not None and storage_class not in self.prices:
                raise ValueError(
                    f"cost.{key} is {storage_class!r}, which cost.prices does not price (it prices: {known}); "
                    f"add {storage_class!r} to cost.prices or pick one of those"
                )
        return self

    def price(self, storage_class: str) -> float:
        """The price per GB-month of ``storage_class`` (a class :attr:`prices` names)."""
        return self.prices[storage_class]
