"""Storage cost (``icefield cost``): the bytes a table keeps, sorted into the current snapshot, history only,
metadata and orphans, add up to the bytes under its folder on disk; small files, prices per storage class,
owner and namespace totals, JSON output and the ``cost:`` block's errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.stores import STORES, Store, make_store

from icefield.cli import EXIT_USAGE, cli
from icefield.config import load_project
from icefield.config.cost import GB, CostConfig, parse_size
from icefield.errors import ConfigError
from icefield.iceberg.cost import TableCost, storage_costs, table_cost, totals
from icefield.write.orphans import remove_orphans

PRICES = {"standard": 0.02, "infrequent": 0.0125}
PIPELINES: dict[str, dict[str, Any]] = {
    "orders": {
        "source": {"type": "files", "path": "data/orders/*.jsonl"},
        "target": {"table": "shop.orders", "mode": "merge", "keys": ["id"]},
        "checks": [{"not_null": ["id"]}],
        "scheduling": {"owner": "sales"},
    },
    "clicks": {
        "source": {"type": "files", "path": "data/clicks/*.jsonl"},
        "target": {"table": "web.clicks"},
        "scheduling": {"owner": "web"},
    },
    "visits": {
        "source": {"type": "files", "path": "data/visits/*.jsonl"},
        "target": {"table": "web.visits"},
    },
}


def _drop(root: Path, folder: str, name: str, rows: list[dict[str, Any]]) -> None:
    (root / "data" / folder).mkdir(parents=True, exist_ok=True)
    (root / "data" / folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _lake(lake: Any, store: Store | None = None) -> Any:
    cost = {"currency": "EUR", "prices": PRICES}
    lk = lake(PIPELINES, store.project(cost=cost) if store else {"name": "c", "cost": cost})
    _drop(lk.root, "orders", "a.jsonl", [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}, {"id": None, "v": "bad"}])
    _drop(lk.root, "clicks", "a.jsonl", [{"u": 1}])
    _drop(lk.root, "visits", "a.jsonl", [{"page": "x"}])
    for name in PIPELINES:
        assert lk.run(name).conserved
    # The merge rewrites the one data file of shop.orders: its first file stays, kept only by the first snapshot.
    _drop(lk.root, "orders", "b.jsonl", [{"id": 2, "v": "B"}])
    _drop(lk.root, "clicks", "b.jsonl", [{"u": i, "tag": f"t{i}"} for i in range(200)])
    assert lk.run("orders").conserved and lk.run("clicks").conserved
    return lk


def _folder(lk: Any, table: str) -> Path:
    return Path(lk.table(table).metadata.location.removeprefix("file://"))


def _sizes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _snapshot_files(lk: Any, table: str, snapshot_id: int | None = None) -> set[Path]:
    """The data and delete files a reader of the snapshot opens (pyiceberg's planning, not the manifests' sizes)."""
    t = lk.table(table)
    tasks = t.scan(snapshot_id=snapshot_id).plan_files() if snapshot_id else t.scan().plan_files()
    return {Path(p.removeprefix("file://")) for task in tasks for p in [task.file.file_path, *(d.file_path for d in task.delete_files)]}


def _expect(lk: Any, table: str, orphans: set[Path]) -> dict[str, int]:
    """The parts of ``table``'s storage from the files on disk: what the report must say, byte for byte."""
    folder = _folder(lk, table)
    data, meta = _sizes(folder / "data"), _sizes(folder / "metadata")
    current = _snapshot_files(lk, table)
    assert current <= data.keys()
    return {
        "current_bytes": sum(data[p] for p in current),
        "history_bytes": sum(s for p, s in data.items() if p not in current and p not in orphans),
        "metadata_bytes": sum(s for p, s in meta.items() if p not in orphans),
        "orphan_bytes": sum(s for p, s in {**data, **meta}.items() if p in orphans),
        "total_bytes": sum(data.values()) + sum(meta.values()),
        "current_files": len(current),
        "orphan_files": len(orphans),
    }


def _figures(c: TableCost, keys: Any) -> dict[str, int]:
    return {k: getattr(c, k) for k in keys}


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, tmp_path)


def _stored(store: Store, lk: Any, table: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """The table's location and the sizes of the files under its data/ and metadata/ folders on the store,
    by location."""
    loc = lk.table(table).metadata.location.rstrip("/")
    data = {f"{loc}/data/{p}": n for p, n in store.sizes(f"{loc}/data").items()}
    meta = {f"{loc}/metadata/{p}": n for p, n in store.sizes(f"{loc}/metadata").items()}
    return loc, data, meta


def _planned(lk: Any, table: str, snapshot_id: int | None = None) -> set[str]:
    t = lk.table(table)
    tasks = t.scan(snapshot_id=snapshot_id).plan_files() if snapshot_id else t.scan().plan_files()
    return {p for task in tasks for p in [task.file.file_path, *(d.file_path for d in task.delete_files)]}


def test_each_byte_under_a_table_is_current_history_metadata_or_orphan_and_priced(lake: Any, store: Store) -> None:
    lk = _lake(lake, store)
    loc, _, _ = _stored(store, lk, "shop.orders")
    older = [s.snapshot_id for s in lk.table("shop.orders").metadata.snapshots[:-1]]
    kept_by_history = set().union(*(_planned(lk, "shop.orders", s) for s in older)) - _planned(lk, "shop.orders")
    assert len(kept_by_history) == 1, "the merge rewrote the first data file: only the first snapshot keeps it"
    junk, stray = f"{loc}/data/id=junk/crashed-commit.parquet", f"{loc}/metadata/snap-crashed.avro"  # no snapshot names them
    store.put(junk, b"P" * 1234)
    store.put(stray, b"x" * 77)

    costs = {c.table: c for c in storage_costs(lk.catalog, lk.project())}
    assert sorted(costs) == ["shop.orders", "shop.orders__quarantine", "web.clicks", "web.visits"]
    for name, c in costs.items():
        orphans = {junk, stray} if name == "shop.orders" else set()
        _, data, meta = _stored(store, lk, name)
        current = _planned(lk, name)
        assert current <= data.keys()
        expected = {
            "current_bytes": sum(data[p] for p in current),
            "history_bytes": sum(n for p, n in data.items() if p not in current and p not in orphans),
            "metadata_bytes": sum(n for p, n in meta.items() if p not in orphans),
            "orphan_bytes": sum(n for p, n in {**data, **meta}.items() if p in orphans),
            "total_bytes": sum(data.values()) + sum(meta.values()),
            "current_files": len(current),
            "orphan_files": len(orphans),
        }
        assert _figures(c, expected) == expected, name
        assert c.current_bytes + c.history_bytes + c.metadata_bytes + c.orphan_bytes == c.total_bytes
        assert c.data_bytes == c.current_bytes and c.delete_bytes == 0  # copy-on-write: no delete files
        assert c.total_cost == pytest.approx(c.total_bytes / 2**30 * PRICES["standard"], rel=1e-12)
        assert c.bytes_by_class == {"standard": c.total_bytes}
        assert c.currency == "EUR" and c.storage_class == "standard"
        assert sum(b for part, (_, b, _) in c.by_part().items() if part != "small") == c.total_bytes
    o = costs["shop.orders"]
    _, data, _ = _stored(store, lk, "shop.orders")
    assert (o.history_files, o.history_bytes) == (1, sum(data[p] for p in kept_by_history))
    assert (o.orphan_files, o.orphan_bytes) == (2, 1234 + 77)
    dry = remove_orphans(lk.catalog, "shop.orders", older_than="0s", dry_run=True)
    assert (dry.orphans, dry.orphan_bytes) == (o.orphan_files, o.orphan_bytes), "the orphans cleanup would delete"
    assert o.orphan_cost == pytest.approx((1234 + 77) / GB * PRICES["standard"])
    assert o.history_cost == pytest.approx(o.history_bytes / GB * PRICES["standard"])
    assert o.snapshots == 2 and costs["web.clicks"].history_bytes == 0, "appends keep every file current"
    # Small files: the default threshold is a quarter of the table's target file size; every file here is under it.
    clicks = costs["web.clicks"]
    assert (clicks.small_files, clicks.small_bytes) == (2, clicks.data_bytes)
    assert clicks.small_file_threshold == int(lk.table("web.clicks").metadata.properties.get("write.target-file-size-bytes", 512 * 1024**2)) // 4

    # Expiry frees exactly what the report called history.
    code, out = _invoke(lk.root, "expire", "shop.orders", "--older-than", "0", "--json")
    assert code == 0 and json.loads(out)["data_files_deleted"] == 1, out
    after = table_cost(lk.catalog, "shop.orders", lk.project().config.cost)
    assert after.history_bytes == 0 and after.current_bytes == o.current_bytes
    assert not any(store.exists(p) for p in kept_by_history)


def test_small_files_are_those_under_the_configured_size(lake: Any) -> None:
    lk = _lake(lake)
    sizes = sorted(_sizes(_folder(lk, "web.clicks") / "data").values())
    assert len(sizes) == 2 and sizes[0] < sizes[1]
    c = table_cost(lk.catalog, "web.clicks", CostConfig(prices=PRICES, small_file_bytes=sizes[1]))
    assert (c.small_files, c.small_bytes, c.small_file_threshold) == (1, sizes[0], sizes[1])
    assert c.small_cost == pytest.approx(sizes[0] / GB * PRICES["standard"])
    c = table_cost(lk.catalog, "web.clicks", CostConfig(prices=PRICES, small_file_bytes=sizes[0]))
    assert (c.small_files, c.small_bytes) == (0, 0), "a file of exactly the threshold is not small"


def test_owners_and_namespaces_sum_their_tables_and_a_location_sets_the_storage_class(lake: Any, tmp_path: Path) -> None:
    lk = _lake(lake)
    # The web namespace lives on the infrequent tier: every file under it is priced so.
    web = _folder(lk, "web.clicks").parent
    _set_cost(lk.root, locations={str(web): "infrequent"})
    costs = storage_costs(lk.catalog, lk.project())
    by = {c.table: c for c in costs}
    assert {t: c.owner for t, c in by.items()} == {
        "shop.orders": "sales", "shop.orders__quarantine": "sales", "web.clicks": "web", "web.visits": "",
    }
    assert by["web.clicks"].storage_class == "infrequent" and by["web.clicks"].bytes_by_class == {"infrequent": by["web.clicks"].total_bytes}
    assert by["web.clicks"].total_cost == pytest.approx(by["web.clicks"].total_bytes / GB * PRICES["infrequent"])
    assert by["shop.orders"].total_cost == pytest.approx(by["shop.orders"].total_bytes / GB * PRICES["standard"])

    owners = totals(costs, "owner")
    assert sorted(owners) == ["", "sales", "web"]
    assert owners["sales"].tables == 2
    assert owners["sales"].total_bytes == by["shop.orders"].total_bytes + by["shop.orders__quarantine"].total_bytes
    assert owners["sales"].history_bytes == by["shop.orders"].history_bytes > 0
    namespaces = totals(costs, "namespace")
    assert namespaces["web"].total_cost == pytest.approx(by["web.clicks"].total_cost + by["web.visits"].total_cost)
    assert namespaces["web"].total_bytes == sum(_sizes(web).values())

    # The command: a table, and with --json the same figures and the totals.
    code, out = _invoke(lk.root, "cost", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert [t["table"] for t in doc["tables"]] == sorted(by)
    assert {t["table"]: t["total_bytes"] for t in doc["tables"]} == {t: c.total_bytes for t, c in by.items()}
    assert doc["owners"]["sales"]["total_bytes"] == owners["sales"].total_bytes
    assert doc["namespaces"]["shop"]["orphan_bytes"] == 0
    assert doc["namespaces"]["shop"]["history_files"] == by["shop.orders"].history_files == 1
    assert doc["total"]["total_bytes"] == sum(c.total_bytes for c in costs)
    assert doc["currency"] == "EUR" and doc["prices"] == PRICES
    code, out = _invoke(lk.root, "cost", "--owner", "web", "--json")
    assert [t["table"] for t in json.loads(out)["tables"]] == ["web.clicks"]
    code, out = _invoke(lk.root, "cost", "--namespace", "shop", "--json")
    assert sorted(json.loads(out)["namespaces"]) == ["shop"]
    code, out = _invoke(lk.root, "cost")
    assert code == 0 and "web.clicks" in out and "Per owner" in out and "sales" in out and "EUR" in out
    code, out = _invoke(lk.root, "cost", "no.such")
    assert code == EXIT_USAGE and "no.such" in out

    # The project's owner is every pipeline's that names none.
    _set_scheduling(lk.root, owner="platform")
    by = {c.table: c for c in storage_costs(lk.catalog, lk.project())}
    assert (by["web.visits"].owner, by["web.clicks"].owner) == ("platform", "web")


def _set_scheduling(root: Path, **scheduling: Any) -> None:
    import yaml

    path = root / "icefield.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["scheduling"] = scheduling
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")


def _set_cost(root: Path, **cost: Any) -> None:
    import yaml

    path = root / "icefield.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["cost"] = {**doc.get("cost", {}), **cost}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")


def _invoke(root: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["--project", str(root), *args])
    return res.exit_code, res.output


@pytest.mark.parametrize(
    ("cost", "says"),
    [
        ({"prices": {"standard": 0.02}, "storage_class": "glacier"},
         ["cost: ", "cost.storage_class is 'glacier'", "does not price (it prices: standard)", "add 'glacier' to cost.prices"]),
        ({"prices": {"standard": -1}}, ["cost.prices:", "storage class 'standard' is -1", "0 or more"]),
        ({"prices": {"standard": "cheap"}}, ["cost.prices:", "'cheap'", "give a number"]),
        ({"prices": {}}, ["cost.prices:", "map each storage class to its price", "{standard: 0.023}"]),
        ({"small_file_bytes": "8 parsecs"}, ["cost.small_file_bytes:", "'8 parsecs' is not a size", "e.g. 8MB"]),
        ({"small_file_bytes": 0}, ["cost.small_file_bytes:", "above zero"]),
        ({"archive_class": "cold"}, ["cost.archive_class is 'cold'", "add 'cold' to cost.prices"]),
        ({"locations": {"relative/folder": "standard"}}, ["cost.locations:", "location 'relative/folder' is not an absolute folder or a URI"]),
        ({"locations": {"s3://cold": "cold"}}, ["cost.locations['s3://cold'] is 'cold'"]),
        ({"price": {"standard": 1}}, ["cost.price: unknown key", "allowed keys here: currency, prices"]),
    ],
)
def test_cost_block_errors_name_the_key_the_value_and_the_fix(make_project: Any, cost: dict[str, Any], says: list[str]) -> None:
    root = make_project(project={"name": "c", "cost": cost})
    with pytest.raises(ConfigError) as e:
        load_project(root, env={})
    for text in says:
        assert text in str(e.value)
    code, out = _invoke(root, "cost")
    assert code == EXIT_USAGE and says[-1] in out


def test_sizes_and_defaults() -> None:
    assert parse_size("8MB") == parse_size("8 MiB") == parse_size("8m") == 8 * 1024**2
    assert parse_size("1.5KB") == 1536 and parse_size(1048576) == 1024**2 and parse_size("2GB") == 2 * GB
    for bad in ("", "-1MB", "1PB", True, "0.2"):
        with pytest.raises(ConfigError, match="not a size above zero"):
            parse_size(bad)
    default = CostConfig()
    assert (default.currency, default.storage_class, default.prices, default.small_file_bytes) == ("USD", "standard", {"standard": 0.023}, None)


def test_delete_files_of_a_merge_on_read_table_count_in_the_current_snapshot(lake: Any) -> None:
    pipes = {"orders": {**PIPELINES["orders"], "target": {**PIPELINES["orders"]["target"], "properties": {"write.merge.mode": "merge-on-read"}}}}
    lk = lake(pipes, {"name": "c"})
    _drop(lk.root, "orders", "a.jsonl", [{"id": i, "v": "a"} for i in range(50)])
    assert lk.run("orders").conserved
    _drop(lk.root, "orders", "b.jsonl", [{"id": 7, "v": "B"}])
    assert lk.run("orders").conserved
    tasks = list(lk.table("shop.orders").scan().plan_files())
    deletes = {Path(d.file_path.removeprefix("file://")) for t in tasks for d in t.delete_files}
    assert len(deletes) == 1, "the merge marked the replaced row in a position delete file"
    (c,) = storage_costs(lk.catalog, lk.project(), ["shop.orders"])
    expected = _expect(lk, "shop.orders", set())
    assert _figures(c, expected) == expected
    assert c.delete_bytes == sum(p.stat().st_size for p in deletes) and c.data_bytes + c.delete_bytes == c.current_bytes
    assert c.history_bytes == 0, "merge-on-read keeps every data file current"
    assert c.total_cost == pytest.approx(c.total_bytes / GB * 0.023), "without a cost block: S3 Standard's price"
    assert c.currency == "USD"


def test_files_moved_to_an_archive_location_are_priced_at_the_archive_class(lake: Any, tmp_path: Path) -> None:
    cold = (tmp_path / "cold").resolve()
    pipe = {
        "source": {"type": "files", "path": "drop/*.jsonl", "format": "jsonl", "columns": {"k": "long", "v": "string", "ts": "timestamptz"}},
        "target": {
            "table": "t.ev", "mode": "merge", "keys": ["k"], "partition_by": ["day(ts)"],
            "maintenance": {"compact_every": 1, "archive_older_than": "30d", "archive_location": str(cold)},
        },
        "scheduling": {"owner": "events"},
    }
    lk = lake({"p": pipe}, {"name": "c", "cost": {"prices": PRICES, "archive_class": "infrequent"}})
    (lk.root / "drop").mkdir()
    for b, when in enumerate(["2020-01-01T10:00:00Z", "2020-01-02T10:00:00Z", "2999-01-01T10:00:00Z"]):
        (lk.root / "drop" / f"b{b}.jsonl").write_text("".join(json.dumps({"k": 10 * b + i, "v": f"v{b}", "ts": when}) + "\n" for i in range(3)))
    assert lk.run("p").status == "success"
    archived = {p: p.stat().st_size for p in cold.rglob("*") if p.is_file()}
    current = {Path(p.removeprefix("file://")) for p in _planned(lk, "t.ev")}
    assert archived and set(archived) <= current, "the old partitions' current files live in the archive"

    (c,) = storage_costs(lk.catalog, lk.project())
    assert c.owner == "events" and c.storage_class == "standard"
    assert c.bytes_by_class == {"infrequent": sum(archived.values()), "standard": c.total_bytes - sum(archived.values())}
    assert c.current_bytes == sum(archived.values()) + sum(p.stat().st_size for p in current - set(archived))
    assert c.total_cost == pytest.approx((sum(archived.values()) * PRICES["infrequent"] + c.bytes_by_class["standard"] * PRICES["standard"]) / GB)
    # The same from cost.locations, without archive_class.
    project = lk.project()
    config = project.config.model_copy(update={"cost": CostConfig(prices=PRICES, locations={str(cold): "infrequent"})})
    (c2,) = storage_costs(lk.catalog, dataclasses.replace(project, config=config))
    assert c2.bytes_by_class == c.bytes_by_class


# ------------------------------------------------------------------ the same figures as metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_show_exports_what_icefield_cost_reports_per_table_part_and_owner(lake: Any) -> None:
    lk = _lake(lake)
    code, out = _invoke(lk.root, "metrics", "show")
    assert code == 0, out
    got = _samples(out)
    costs = storage_costs(lk.catalog, lk.project())
    assert costs, "the lake has tables"
    for c in costs:
        for part, (files, size, price) in c.by_part().items():
            key = (("namespace", c.namespace), ("owner", c.owner), ("part", part), ("table", c.table))
            assert got[("icefield_table_storage_files", key)] == files, (c.table, part)
            assert got[("icefield_table_storage_bytes", key)] == size, (c.table, part)
            assert got[("icefield_table_storage_cost_per_month", tuple(sorted((*key, ("currency", "EUR")))))] == pytest.approx(price, rel=1e-9)
        total = sum(v for (name, labels), v in got.items() if name == "icefield_table_storage_bytes" and ("table", c.table) in labels and ("part", "small") not in labels)
        assert total == c.total_bytes, f"the parts but small add up to what {c.table} stores"
    by_owner = {k: v.total_bytes for k, v in totals(costs, "owner").items()}
    assert by_owner["sales"] == sum(v for (name, labels), v in got.items() if name == "icefield_table_storage_bytes" and ("owner", "sales") in labels and ("part", "small") not in labels)
    assert got[("icefield_table_cost_errors", ())] == 0
    code, out = _invoke(lk.root, "metrics", "show", "--no-cost")
    assert code == 0 and "icefield_table_storage_bytes" not in out and "icefield_table_bytes" in out


def test_the_cost_collector_keeps_its_figures_until_they_are_older_than_every(lake: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from icefield.inspect import CostCollector

    lk = _lake(lake)
    now = [1000.0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CostCollector(lk.catalog, lk.project(), every=60.0, clock=lambda: now[0]))  # type: ignore[arg-type]
    key = ("icefield_table_storage_bytes", (("namespace", "web"), ("owner", "web"), ("part", "current"), ("table", "web.clicks")))
    first = _samples(generate_latest(registry).decode())[key]
    _drop(lk.root, "clicks", "c.jsonl", [{"u": i, "tag": "more"} for i in range(50)])
    assert lk.run("clicks").conserved
    now[0] += 59
    again = _samples(generate_latest(registry).decode())
    assert again[key] == first, "within --cost-every the last figures are served"
    assert again[("icefield_table_storage_cost_age_seconds", ())] == 59
    now[0] += 1
    assert _samples(generate_latest(registry).decode())[key] > first, "then they are computed again"

    # A table that cannot be read is counted and keeps its last figures; the others are computed.
    meta = Path(lk.table("web.visits").metadata_location.removeprefix("file://"))
    meta.rename(meta.with_suffix(".gone"))
    now[0] += 60
    got = _samples(generate_latest(registry).decode())
    assert got[("icefield_table_cost_errors", ())] == 1
    assert ("icefield_table_storage_bytes", (("namespace", "web"), ("owner", ""), ("part", "current"), ("table", "web.visits"))) in got
