"""The CLI commands of the catalog and the storage: catalog backup / restore / verify / register, orphans, tombstones, archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from icefield.cli import EXIT_FAILED, cli, guarded
from icefield.cli.commands import TABLE, json_option, pass_out
from icefield.cli.output import Output
from icefield.config.ages import DEFAULT_ORPHAN_AGE

# ---------------------------------------------------------------------------------------------- catalog


@cli.group()
def catalog() -> None:
    """Back up the catalog, restore it, check a backup, recover a lost table."""


@catalog.command("backup")
@click.argument("dest", type=str)
@json_option
@pass_out
@guarded
def catalog_backup(out: Output, dest: str) -> None:
    """Write a consistent backup of the project's catalog (namespaces; each table's metadata location and
    properties) as a new JSON file in the folder DEST, or under the object-store prefix DEST (s3://bucket/backups,
    reached with the project's storage settings). Earlier backups are never overwritten."""
    from icefield.catalog import open_catalog
    from icefield.write.backups import backup_catalog

    project = out.project()
    res = backup_catalog(open_catalog(project), dest, warehouse=project.warehouse_uri())
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    else:
        out.print("Backed up {tables} table(s) and {namespaces} namespace(s) to {path}.", **vars(res))


def _open_target(out: Output, into: str | None) -> Any:
    """The project's catalog, or the SQL catalog at ``into`` (same catalog name and warehouse)."""
    from icefield.catalog import open_catalog, sql_catalog, sqlite_relative_to, storage_properties
    from icefield.config.secrets import resolve

    project = out.project()
    if into is None:
        return open_catalog(project)
    uri = sqlite_relative_to(resolve(into, where="--into", base_dir=Path.cwd()), Path.cwd())
    return sql_catalog(project.config.catalog.name, uri, project.warehouse_uri(), **storage_properties(project))


@catalog.command("restore")
@click.argument("backup", type=str)
@click.option("--into", default=None, help="Restore into the SQL catalog at this URI (e.g. sqlite:///restored.db) instead of the project's.")
@click.option("--force", is_flag=True, help="Restore into a catalog that holds tables: the backup's tables are registered over them.")
@click.option(
    "--newest", is_flag=True,
    help="Register each table at the newest metadata file under its location instead of the backup's (keeps the commits made after the backup).",
)
@json_option
@pass_out
@guarded
def catalog_restore(out: Output, backup: str, into: str | None, force: bool, newest: bool) -> None:
    """Rebuild a catalog from BACKUP (a backup file, or the folder of backups: its newest) by registering
    each table at its metadata location (with --newest: at its newest metadata file). Refuses a catalog
    that holds tables unless --force. Exit 1 when a table could not be restored."""
    from icefield.catalog import storage_properties
    from icefield.write.backups import read_backup, restore_catalog

    path, doc = read_backup(backup, storage_properties(out.project()))
    target = _open_target(out, into)
    res = restore_catalog(target, doc, force=force, newest=newest, backup=str(path))
    failed = res.failed
    if out.as_json:
        out.emit({"status": "failed" if failed else "ok", "backup": res.backup, "created_at": doc.get("created_at"), "namespaces": res.namespaces, "tables": res.tables})
    else:
        out.print("Restored from {backup} (taken {created}):", backup=res.backup, created=doc.get("created_at"))
        out.table(
            "Tables", ["table", "status", "metadata", *(["newer than the backup"] if newest else []), "error"],
            [
                [t["table"], t["status"], t["metadata_location"], *(["yes" if t.get("newer_than_backup") else ""] if newest else []), t.get("error", "")]
                for t in res.tables
            ],
        )
    if failed:
        raise SystemExit(EXIT_FAILED)


@catalog.command("verify")
@click.argument("backup", type=str)
@json_option
@pass_out
@guarded
def catalog_verify(out: Output, backup: str) -> None:
    """Restore BACKUP into a scratch catalog in a temporary folder and check that every table reads the
    same rows, current snapshot and snapshots as in the live catalog. Exit 1 when one does not (a table
    that moved on since the backup counts: take a new backup)."""
    from icefield.catalog import open_catalog, storage_properties
    from icefield.write.backups import backup_name, read_backup, verify_backup

    project = out.project()
    path, doc = read_backup(backup, storage_properties(project))
    res = verify_backup(open_catalog(project), doc, backup=str(path), warehouse=project.warehouse_uri())
    if out.as_json:
        out.emit({"status": "ok" if res.ok else "failed", "backup": res.backup, "created_at": doc.get("created_at"), "tables": res.tables})
    else:
        out.table(
            f"Backup {backup_name(path)} (taken {doc.get('created_at')})", ["table", "status", "rows (restored)", "rows (live)", "message"],
            [[t["table"], t["status"], t.get("restored_rows", ""), t.get("live_rows", ""), t.get("message", "")] for t in res.tables],
        )
    if not res.ok:
        raise SystemExit(EXIT_FAILED)


@catalog.command("register")
@click.argument("table", type=TABLE)
@click.option("--metadata-file", default=None, help="Register at this metadata file (default: the newest under the table's location).")
@click.option("--location", default=None, help="The table's folder (default: where the catalog puts TABLE in the warehouse).")
@json_option
@pass_out
@guarded
def catalog_register(out: Output, table: str, metadata_file: str | None, location: str | None) -> None:
    """Recover TABLE, which the catalog lost, from its newest metadata file (the highest version of
    <location>/metadata/NNNNN-<uuid>.metadata.json). Refuses a table the catalog has."""
    from icefield.catalog import open_catalog
    from icefield.write.backups import register_table

    res = register_table(open_catalog(out.project()), table, metadata_file=metadata_file, location=location)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    else:
        out.print(
            "Registered {table} at {metadata_location}: {snapshots} snapshot(s), current {current_snapshot_id}.", **vars(res),
        )


# ---------------------------------------------------------------------------------------------- orphans


@cli.command()
@click.argument("table", type=TABLE)
@click.option(
    "--older-than", default=DEFAULT_ORPHAN_AGE, show_default=True,
    help="Delete only files older than this (3d, 12h, 30m, 0): it protects the files of a commit in flight.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
@pass_out
@guarded
def orphans(out: Output, table: str, older_than: str, dry_run: bool) -> None:
    """Delete the files under TABLE's data/ and metadata/ folders that no snapshot, branch, tag, held
    audit batch, metadata file or statistics file reaches (failed commits' files) and that are older than
    --older-than."""
    from icefield.catalog import open_catalog
    from icefield.write.orphans import remove_orphans

    res = remove_orphans(open_catalog(out.project()), table, older_than=older_than, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    elif not res.orphans:
        out.print(
            "No orphan files in {table} older than {older_than} ({listed} files, {young} unreached but newer).",
            table=table, older_than=older_than, listed=res.files_listed, young=res.too_young,
        )
    else:
        out.print(
            ("Would delete" if dry_run else "Deleted") + " {orphans} orphan file(s) of {table} ({orphan_bytes:,} bytes) older than {older_than}; "
            "{files_reachable} reachable files kept, {too_young} unreached but newer files kept.",
            **{**vars(res), "table": table, "older_than": older_than},
        )


@cli.command()
@click.argument("table", type=TABLE)
@click.option(
    "--older-than", required=True,
    help="Delete tombstones recorded longer ago than this (30d, 12h): longer than any source may redeliver an event.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
@pass_out
@guarded
def tombstones(out: Output, table: str, older_than: str, dry_run: bool) -> None:
    """Prune TABLE's tombstones (the deleted keys of a CDC merge, kept in TABLE__tombstones) recorded
    longer ago than --older-than, in one commit. A redelivered older version of a key deleted before that
    horizon is merged again (the key comes back); inside it, it stays deleted."""
    from icefield.catalog import open_catalog
    from icefield.write.tombstones import prune_tombstones

    res = prune_tombstones(open_catalog(out.project()), table, older_than=older_than, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    else:
        out.print(
            ("Would delete" if dry_run else "Deleted") + " {tombstones_removed} tombstone(s) of {table} older than {older_than}; "
            "{tombstones_kept} newer ones kept in the files it rewrote.",
            **{**vars(res), "table": table, "older_than": older_than},
        )


# ---------------------------------------------------------------------------------------------- archive


@cli.command()
@click.argument("table", type=TABLE)
@click.option(
    "--older-than", default=None,
    help="Move the partitions whose time range ended longer ago than this (180d, 12h). Default: the archive_older_than of the pipeline that writes TABLE.",
)
@click.option(
    "--location", default=None,
    help="Where they go: s3://bucket/prefix, file:///folder or /folder (files under LOCATION/<namespace>/<table>/data/). Default: the pipeline's archive_location.",
)
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@json_option
@pass_out
@guarded
def archive(out: Output, table: str, older_than: str | None, location: str | None, dry_run: bool) -> None:
    """Move TABLE's old partitions to a cheaper storage tier: the data files of the partitions (of a time
    partition field: day(ts), month(ts), ...) older than --older-than are rewritten under --location, their
    deletes applied, in one 'replace' snapshot; readers see the same rows. Files already there stay. The
    old files leave the table's own location when `icefield expire` removes the snapshots before."""
    from icefield.catalog import open_catalog
    from icefield.errors import ConfigError
    from icefield.write.tiering import archive_table

    project = out.project()
    declared = next((p.target.maintenance for p in project.pipelines.values() if p.target.table == table and p.target.maintenance.archive_location), None)
    older_than = older_than or (declared.archive_older_than if declared else None)
    location = location or (declared.archive_location if declared else None)
    if older_than is None or location is None:
        raise ConfigError(
            f"archive of {table}: give --older-than and --location (e.g. --older-than 180d --location s3://cold-bucket/archive), "
            "or declare archive_older_than and archive_location in the target.maintenance of the pipeline that writes it"
        )
    res = archive_table(open_catalog(project), table, older_than=older_than, location=location, dry_run=dry_run)
    if out.as_json:
        out.emit({"status": "ok", **vars(res)})
    elif not res.files_moved:
        out.print("Nothing to archive in {table}: no data file of a partition older than {older_than} outside {location}.", table=table, older_than=older_than, location=res.location)
    else:
        out.print(
            ("Would move" if dry_run else "Moved") + " {files_moved} file(s) of {partitions} partition(s) of {table} older than {older_than} "
            "({bytes:,} bytes, {rows:,} rows) to {location}"
            + ("; nothing committed." if dry_run else " as {files_written} file(s), {delete_files_removed} delete file(s) applied; snapshot {snapshot_id} ({seconds:.2f} s)."),
            **{**vars(res), "table": table, "older_than": older_than},
        )
