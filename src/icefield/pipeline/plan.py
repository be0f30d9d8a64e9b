"""The project plan: which pipelines and models run, in which order, and what each one waits for.

Every entry point runs a project through this module (``icefield run`` today; Airflow and the service
the same way): :func:`build_plan` returns the nodes in run order with their upstream nodes, and
:func:`run_plan` runs them.

**Nodes and edges.** A node is a pipeline or a SQL model; it writes its target table. A node *reads*:

- a model: the tables its SQL names as ``namespace.table`` (parsed with sqlglot; the name of a CTE is not
  a table). Names are matched as the query engine matches them, without regard to case; when two tables
  the project writes differ only in case, the one the SQL spells exactly is read, and if it spells
  neither exactly the model waits for both (the query engine refuses the ambiguous name when it runs);
- a pipeline: the tables its gates read besides its own: the table of a ``references`` gate (``to:
  namespace.table.column``, an exact Iceberg name) and the tables a ``sql`` gate names. Its source lies
  outside the catalog. A gate reads the other table to judge the batch, so the batch is judged against
  that table as this run leaves it: orders whose customers load in the same run are not held.

A node runs after every other node that writes a table it reads (its *upstream*); a node reading its own
table waits for nobody. Tables no node of the project writes add no edge.

**Order.** Nodes run in dependency order; among nodes free to run, pipelines come before models, then
names in alphabetical order, so a project without dependencies runs as it always did (every pipeline,
then every model, by name). A cycle cannot run in any order: :func:`build_plan` refuses it with a
:class:`~icefield.errors.ConfigError` naming the cycle and the tables that close it, before anything
runs.

**Failures.** A node that fails (or is held by its gates) skips the nodes that read what it writes,
directly or through other nodes; they are reported with status ``skipped`` and the reason. Nodes that do
not depend on it run on. An unexpected exception (a bug) stops the run.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from icefield import interrupts
from icefield.config.secrets import redact
from icefield.errors import ConfigError, GateFailedError, IcefieldError, InterruptedRunError
from icefield.observe.events import EventStream, NodeSkipped, Observer

if TYPE_CHECKING:
    import threading
    from datetime import date

    from pyiceberg.catalog import Catalog

    from icefield.config import Project
    from icefield.config.window import Window
    from icefield.pipeline.results import BatchResult, RunResult

log = logging.getLogger(__name__)

NodeKind = Literal["pipeline", "model"]

_KIND_RANK = {"pipeline": 0, "model": 1}
"""Among nodes free to run, pipelines first (what models read usually comes from pipelines)."""


@dataclass(frozen=True)
class Node:
    """One pipeline or model of the plan.

    ``id`` (``"pipeline orders"``, ``"model daily_revenue"``) names it in the plan. ``reads`` are the
    tables it reads besides its own, as written (sorted); ``upstream`` the ids of the nodes it runs after,
    in plan order; ``via`` says which table makes it wait for which node: ``(node id, table)`` pairs."""

    kind: NodeKind
    name: str
    table: str
    reads: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    via: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind} {self.name}"

    def tables_from(self, upstream_id: str) -> list[str]:
        """The tables written by node ``upstream_id`` that this node reads."""
        return [t for n, t in self.via if n == upstream_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.id,
            "kind": self.kind,
            "name": self.name,
            "table": self.table,
            "reads": list(self.reads),
            "upstream": list(self.upstream),
            "via": [{"node": n, "table": t} for n, t in self.via],
        }


@dataclass(frozen=True)
class Plan:
    """The nodes to run, in run order (each after its upstream nodes)."""

    nodes: tuple[Node, ...]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, node_id: str) -> Node:
        """The node ``node_id`` (``"pipeline orders"``); KeyError when the plan lacks it."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [n.to_dict() for n in self.nodes]}


# ---------------------------------------------------------------------------------------------- reading SQL


def tables_read(sql: str) -> set[tuple[str | None, str]] | None:
    """The tables ``sql`` (DuckDB dialect) reads, as ``(schema, name)`` spelled as written (``schema``
    None when unqualified; a three-part name's catalog is dropped). The name of a CTE is not a table
    where the CTE is in scope (sqlglot's scope analysis, names compared without regard to case as DuckDB
    compares them); table functions are left out. None when ``sql`` cannot be parsed."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
    from sqlglot.optimizer.scope import traverse_scope

    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError:
        return None
    found: list[exp.Table] = []
    for tree in trees:
        # Scopes are found on a copy whose names are folded as DuckDB folds them (a CTE ``Orders`` is
        # what ``from orders`` reads); the tables are then taken from the tree as written.
        folded = normalize_identifiers(tree.copy(), dialect="duckdb")
        written: dict[int, Any] = {id(f): t for f, t in zip(folded.walk(), tree.walk(), strict=True)}
        # The outermost queries (a DESCRIBE or PIVOT statement holds one) are scoped; a table outside any
        # query (``PIVOT t ON ...``) is read as it is written.
        scoped: set[int] = set()
        for root in (q for q in folded.find_all(exp.Query) if q.find_ancestor(exp.Query) is None):
            scoped.update(id(t) for t in root.find_all(exp.Table))
            try:
                scopes = traverse_scope(root)
            except sqlglot.errors.SqlglotError:
                # Scope analysis gave up: every table node less the names of the CTEs (a table shadowed by
                # a CTE of its name anywhere in the query is taken for the CTE).
                ctes = {c.alias_or_name for c in root.find_all(exp.CTE)}
                found.extend(written[id(t)] for t in root.find_all(exp.Table) if t.db or t.name not in ctes)
                continue
            for scope in scopes:
                found.extend(written[id(s)] for s in scope.sources.values() if isinstance(s, exp.Table))
        found.extend(written[id(t)] for t in folded.find_all(exp.Table) if id(t) not in scoped)
    return {(t.db or None, t.name) for t in found if t.name and not isinstance(t.this, exp.Func)}


def _qualified(refs: set[tuple[str | None, str]]) -> set[str]:
    """``namespace.table`` of each reference of :func:`tables_read` (an unqualified name reaches
    namespace ``main``, as in the query engine)."""
    return {f"{s or 'main'}.{n}" for s, n in refs}


def _written_reads(named: set[str], writers: dict[str, list[str]]) -> list[str]:
    """The tables written by the project (``writers``: table -> node ids) that a query naming ``named``
    reads, matched as DuckDB matches names: without regard to case. Of written tables equal but for case,
    the one the query spells exactly, else all of them (the query engine refuses the ambiguous name)."""
    folded = {t.lower() for t in named}
    groups: dict[str, list[str]] = {}
    for table in writers:
        if table.lower() in folded:
            groups.setdefault(table.lower(), []).append(table)
    out: list[str] = []
    for group in groups.values():
        exact = [t for t in group if t in named]
        out.extend(exact if len(exact) == 1 else group)
    return out


def _reads_of(project: Project, kind: NodeKind, name: str, writers: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """What node ``kind name`` reads: (every table it names but its own, the tables of the project among
    them). SQL that does not parse names nothing: it is refused when the node runs."""
    from icefield.config.gates import ReferencesGate, SqlGate

    named: set[str] = set()
    written: list[str] = []
    if kind == "model":
        model = project.models[name]
        own = model.target.table
        named = _qualified(tables_read(model.sql) or set())
        written = _written_reads(named, writers)
    else:
        pipe = project.pipelines[name]
        own = pipe.target.table
        for gate in pipe.gates:
            if isinstance(gate, ReferencesGate):
                named.add(gate.references.ref_table)
                if gate.references.ref_table in writers:  # the gate loads the table by its exact Iceberg name
                    written.append(gate.references.ref_table)
            elif isinstance(gate, SqlGate):
                refs = _qualified(tables_read(gate.sql.query.replace("{table}", own)) or set())
                named |= refs
                written.extend(_written_reads(refs, writers))
    return sorted(named - {own}), written


def _graph(project: Project) -> dict[str, Node]:
    """Every node of the project with its reads and upstream nodes (upstream not yet in plan order)."""
    specs: list[tuple[NodeKind, str, str]] = [("pipeline", n, p.target.table) for n, p in project.pipelines.items()]
    specs += [("model", n, m.target.table) for n, m in project.models.items()]
    writers: dict[str, list[str]] = {}
    for kind, name, table in specs:
        writers.setdefault(table, []).append(f"{kind} {name}")
    nodes: dict[str, Node] = {}
    for kind, name, table in specs:
        node_id = f"{kind} {name}"
        reads, written = _reads_of(project, kind, name, writers)
        via = sorted({(w, t) for t in written if t != table for w in writers[t] if w != node_id})
        nodes[node_id] = Node(kind, name, table, tuple(reads), tuple(sorted({w for w, _ in via})), tuple(via))
    return nodes


def _order(nodes: dict[str, Node]) -> list[str]:
    """The ids of ``nodes`` in run order: each after its upstream nodes; among nodes free to run,
    pipelines first, then by name. Raises :class:`ConfigError` naming a cycle."""
    waiting = {i: set(n.upstream) for i, n in nodes.items()}
    downstream: dict[str, list[str]] = {i: [] for i in nodes}
    for i, n in nodes.items():
        for up in n.upstream:
            downstream[up].append(i)

    def key(i: str) -> tuple[int, str, str]:
        return (_KIND_RANK[nodes[i].kind], nodes[i].name, i)

    ready = [key(i) for i, ups in waiting.items() if not ups]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        *_, i = heapq.heappop(ready)
        order.append(i)
        for d in downstream[i]:
            waiting[d].discard(i)
            if not waiting[d]:
                heapq.heappush(ready, key(d))
    if len(order) < len(nodes):
        raise ConfigError(_cycle_message(nodes, {i for i in nodes if i not in set(order)}))
    return order


def _cycle_message(nodes: dict[str, Node], stuck: set[str]) -> str:
    """Name one cycle among ``stuck`` (nodes that wait on each other): each node, the table it reads and
    the node that writes it."""
    # Walk upstream from any stuck node: every stuck node waits for some stuck node, so the walk repeats one.
    start = min(stuck)
    path = [start]
    seen = {start: 0}
    while True:
        up = min(u for u in nodes[path[-1]].upstream if u in stuck)
        if up in seen:
            cycle = path[seen[up] :]
            break
        seen[up] = len(path)
        path.append(up)
    # ``cycle`` follows upstream edges (each reads the next); say it in the order data flows.
    cycle.reverse()
    steps = []
    for writer, reader in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        table = nodes[reader].tables_from(writer)[0]
        steps.append(f"{writer} writes {table}, which {reader} reads")
    return (
        "the project's pipelines and models depend on each other in a cycle, so they cannot run in any order: "
        + "; ".join(steps)
        + ". Break the cycle: change a model's SQL or a gate (references/sql) so that one of them no longer reads "
        "that table"
    )


def build_plan(project: Project, names: Iterable[str] = (), models: bool = True) -> Plan:
    """The plan of ``project``: its nodes in run order, each with its upstream nodes.

    Without ``names``: every pipeline, and every model unless ``models`` is False. With ``names``: only
    the pipelines and models of those names (a name that is both is both), in plan order; their upstream
    nodes are not added, and ``models`` is ignored. The whole project's graph is checked either way.

    Raises :class:`ConfigError` for a name the project lacks, or for a cycle (naming it)."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in project.pipelines and n not in project.models]
    if unknown:
        known = ", ".join(sorted([*project.pipelines, *project.models])) or "none"
        raise ConfigError(f"unknown pipeline or model {', '.join(map(repr, unknown))} (known: {known})")
    nodes = _graph(project)
    order = _order(nodes)
    if names:
        wanted = {f"pipeline {n}" for n in names if n in project.pipelines} | {f"model {n}" for n in names if n in project.models}
    else:
        wanted = {i for i, n in nodes.items() if models or n.kind == "pipeline"}
    rank = {i: k for k, i in enumerate(order)}
    ordered = []
    for i in order:
        if i in wanted:
            n = nodes[i]
            ordered.append(Node(n.kind, n.name, n.table, n.reads, tuple(sorted(n.upstream, key=rank.__getitem__)), n.via))
    return Plan(tuple(ordered))


# ---------------------------------------------------------------------------------------------- running


@dataclass
class PlanResult:
    """What :func:`run_plan` did: one :class:`RunResult` per node of the plan, in plan order (``success``,
    ``held``, ``failed`` or ``skipped`` with its ``reason``), and the error of every node that failed."""

    run_id: str
    results: list[RunResult] = field(default_factory=list)
    failures: list[tuple[str, IcefieldError]] = field(default_factory=list)
    """(node id, error) of each failed or held node, in run order; an interruption is the last (node id
    ``run`` when it came between two nodes)."""
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def status(self) -> str:
        """``ok``, ``failed`` or ``interrupted``."""
        return "interrupted" if self.interrupted else "failed" if self.failures else "ok"

    @property
    def error(self) -> tuple[str, IcefieldError] | None:
        """The failure that ends the run: the interruption, else the first failure (None when none)."""
        stopped = [f for f in self.failures if isinstance(f[1], InterruptedRunError)]
        return stopped[0] if stopped else self.failures[0] if self.failures else None

    @property
    def exit_code(self) -> int:
        """The exit code of :attr:`error`'s class: 130 when interrupted, else the first failure's (0 when none)."""
        return self.error[1].exit_code if self.error is not None else 0


StartCallback = Callable[[Node], None]
# Strings: the results module loads pyarrow, and building a plan must not (the Airflow DAG factory builds
# one each time Airflow parses the DAG file).
BatchCallback = Callable[[Node, "BatchResult"], None]
ResultCallback = Callable[[Node, "RunResult"], None]


def run_plan(
    project: Project,
    plan: Plan | None = None,
    catalog: Catalog | None = None,
    run_id: str | None = None,
    *,
    wait: float = 0.0,
    follow: bool = False,
    stop: threading.Event | None = None,
    on_start: StartCallback | None = None,
    on_batch: BatchCallback | None = None,
    on_result: ResultCallback | None = None,
    observers: Sequence[Observer] = (),
    window: Window | tuple[date, date] | None = None,
) -> PlanResult:
    """Run the nodes of ``plan`` (default: :func:`build_plan` of the whole project) in order, under one
    ``run_id``. Returns a :class:`PlanResult` listing every node's result.

    A pipeline runs with :func:`~icefield.pipeline.runner.run_pipeline` (``follow``, ``stop`` and
    ``wait`` are passed on), a model with :func:`~icefield.pipeline.models.run_model` (``wait``). A node
    whose run raises an :class:`IcefieldError` is recorded as failed (or held, for failing gates) with its
    partial result, and each node that runs after it, directly or not, is recorded as ``skipped`` with the
    reason; the others run. ``on_start(node)`` is called before a node runs, ``on_batch(node, batch)`` after
    each batch a pipeline commits, ``on_result(node, result)`` once per node, skipped ones included.
    ``observers`` receive the events of every node's run (:mod:`icefield.observe.events`), and a
    node-skipped event for each node that did not run. ``window`` (a :class:`~icefield.config.window.Window`
    or a ``(start, end)`` pair) backfills that date interval in each pipeline (see
    :func:`~icefield.pipeline.runner.run_pipeline`); models run as usual.

    Raises :class:`InterruptedRunError` on SIGINT (KeyboardInterrupt), with the partial
    :class:`PlanResult` (the rest of the nodes skipped) as ``error.result``. Any other exception (a bug)
    propagates."""
    from icefield.catalog import open_catalog
    from icefield.pipeline.results import RunResult
    from icefield.pipeline.runner import new_run_id

    plan = plan if plan is not None else build_plan(project)
    catalog = catalog or open_catalog(project)
    out = PlanResult(run_id=run_id or new_run_id())
    # Why a node did not succeed, for the nodes after it: (root node, what happened to it).
    fell: dict[str, tuple[str, str]] = {}

    def record(node: Node, result: RunResult) -> None:
        out.results.append(result)
        if on_result is not None:
            on_result(node, result)

    current: Node | None = None
    pending = list(plan.nodes)
    with interrupts.watched():
        try:
            while pending:
                node = pending.pop(0)
                blocked = [u for u in node.upstream if u in fell]
                if blocked:
                    reason = _skip_reason(node, blocked[0], *fell[blocked[0]])
                    fell[node.id] = fell[blocked[0]]
                    blank = _blank(node, out.run_id, "skipped", reason=reason)
                    EventStream(out.run_id, blank.pipeline, observers).emit(NodeSkipped, table=node.table, reason=reason)
                    record(node, blank)
                    continue
                current = node
                if on_start is not None:
                    on_start(node)
                try:
                    result = _run_node(project, node, catalog, out.run_id, wait, follow, stop, on_batch, observers, window)
                except IcefieldError as e:
                    if by_interrupt(e):
                        raise KeyboardInterrupt from e
                    held = isinstance(e, GateFailedError)
                    fell[node.id] = (node.id, "was held by its gates" if held else "failed")
                    out.failures.append((node.id, e))
                    partial = getattr(e, "result", None)
                    if not isinstance(partial, RunResult):
                        partial = _blank(node, out.run_id, "held" if held else "failed", error=redact(str(e)))
                    result = partial
                except Exception as e:
                    if by_interrupt(e):  # a library's own error for the SIGINT (DuckDB's "Query interrupted")
                        raise KeyboardInterrupt from e
                    raise
                current = None
                record(node, result)
        except KeyboardInterrupt:
            interrupted = InterruptedRunError(
                "interrupted (SIGINT): committed batches stay committed; a batch in flight stays pending and the next run retries it"
            )
            out.interrupted = True
            out.failures.append((current.id if current is not None else "run", interrupted))
            if current is not None:
                out.results.append(_blank(current, out.run_id, "failed", error=str(interrupted)))
            out.results.extend(_blank(n, out.run_id, "skipped", reason="the run was interrupted before it started") for n in pending)
            interrupted.result = out  # type: ignore[attr-defined]
            raise interrupted from None
    return out


_CANCELLED = frozenset({"ArrowCancelled", "InterruptException"})
"""The exception types pyarrow and DuckDB raise when a SIGINT cancels one of their calls."""


def by_interrupt(e: BaseException) -> bool:
    """True when ``e`` was caused by SIGINT: one arrived while the run was watching
    (:func:`icefield.interrupts.received`), or its chain holds a ``KeyboardInterrupt``, pyarrow's
    ``ArrowCancelled`` or DuckDB's ``InterruptException`` (each turns a SIGINT that arrives inside one of its
    calls into a cancelled operation, which icefield code may have wrapped as a failure of the step it was
    in)."""
    if interrupts.received():
        return True
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, KeyboardInterrupt) or type(err).__name__ in _CANCELLED:
            return True
        err = err.__cause__ or err.__context__
    return False


def _run_node(
    project: Project,
    node: Node,
    catalog: Catalog,
    run_id: str,
    wait: float,
    follow: bool,
    stop: threading.Event | None,
    on_batch: BatchCallback | None,
    observers: Sequence[Observer],
    window: Window | tuple[date, date] | None = None,
) -> RunResult:
    from icefield.pipeline.models import run_model
    from icefield.pipeline.runner import run_pipeline

    if node.kind == "model":
        return run_model(project, node.name, catalog, run_id, wait=wait, observers=observers)

    def batch_done(b: BatchResult) -> None:
        assert on_batch is not None
        on_batch(node, b)

    cb = batch_done if on_batch is not None else None
    return run_pipeline(project, node.name, catalog, run_id, on_batch=cb, follow=follow, stop=stop, wait=wait, observers=observers, window=window)


def _skip_reason(node: Node, up: str, root: str, what: str) -> str:
    """Why ``node`` is skipped: it reads a table of node ``up``, which did not succeed (``root`` is the node
    that failed, ``what`` what happened to it)."""
    table = node.tables_from(up)[0]
    if root == up:
        return f"it reads {table}, which {up} writes, and {up} {what}"
    return f"it reads {table}, which {up} writes, and {up} was skipped ({root} {what})"


def _result_name(node: Node) -> str:
    """How a :class:`RunResult` names the node (``orders``, ``model.daily_revenue``)."""
    return node.name if node.kind == "pipeline" else f"model.{node.name}"


def _blank(node: Node, run_id: str, status: str, error: str | None = None, reason: str | None = None) -> RunResult:
    """A result for a node that has none of its own: skipped, or failed before its run began."""
    from icefield.pipeline.results import RunResult

    return RunResult(pipeline=_result_name(node), table=node.table, run_id=run_id, status=status, error=error, reason=reason)


__all__ = ["Node", "Plan", "PlanResult", "build_plan", "run_plan", "tables_read"]
