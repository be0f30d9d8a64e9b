"""The floor: engine-neutral primitives over Iceberg table files, for every layer above.

Each module is one concern of a table as files and metadata, and none knows of pipelines, sources,
checks or engines (from icefield it imports only the base: :mod:`icefield.errors`, :mod:`icefield.columns`,
:mod:`icefield.config`):

- :mod:`~icefield.iceberg.datafiles`: writing Arrow data as Iceberg data files (Parquet with field ids and
  statistics), and the data files this process wrote lately (``RECENT``);
- :mod:`~icefield.iceberg.deletes`: position delete files (merge-on-read);
- :mod:`~icefield.iceberg.versions`: which of several versions of a key is the newest;
- :mod:`~icefield.iceberg.schema`: data conformed to a table's schema;
- :mod:`~icefield.iceberg.partitioning`: whether a partition spec fits the data's types;
- :mod:`~icefield.iceberg.planning`: planning a table's files, refusing equality delete files;
- :mod:`~icefield.iceberg.producers`: snapshot producers beyond pyiceberg's (conflict checks of merges,
  row deltas, rewrites);
- :mod:`~icefield.iceberg.history`: refs, ancestry, and what icefield's commits carry (batch ids and
  source positions);
- :mod:`~icefield.iceberg.commits`: the one commit path (retries, conflict replans, unknown outcomes);
- :mod:`~icefield.iceberg.reach`: the files a table's metadata reaches (orphan cleanup, storage cost);
- :mod:`~icefield.iceberg.cost`: the storage a table keeps (current, history, metadata, orphans, small
  files) and its monthly price;
- :mod:`~icefield.iceberg.tables`: tables by name, and the errors of the object store under them that a
  retry may get past.

See ``docs/architecture.md``, section "Layers".
"""
