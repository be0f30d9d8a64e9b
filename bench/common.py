"""Shared helpers of the benchmarks: scale, subprocess measurement, result hashing, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def scale() -> float:
    """``BENCH_SCALE`` (default 1): multiplies every workload's size."""
    return float(os.environ.get("BENCH_SCALE", "1"))


def runs() -> int:
    """``BENCH_RUNS`` (default 3): repetitions of each fast measurement; slow peers run once."""
    return int(os.environ.get("BENCH_RUNS", "3"))


def work_dir(name: str) -> Path:
    base = Path(os.environ.get("BENCH_DIR", ROOT / "build" / "bench"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)


def measure_subprocess(
    module: str, args: dict[str, Any], timeout: float | None = None, python: Path | None = None
) -> Measurement | None:
    """Run ``<python> -m <module> <json args>`` in a fresh process (``python``: another interpreter, e.g.
    a peer's own venv; default this one); the child prints one JSON line with its own ``seconds``,
    ``peak_rss_mb`` and ``result``. Returns None on timeout; raises RuntimeError if the child fails."""
    cmd = [str(python or sys.executable), "-m", module, json.dumps(args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if python is not None else None
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args.get('peer', '')} failed ({proc.returncode}):\n{err[-4000:]}")
    doc = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    wall = time.perf_counter() - started
    return Measurement(seconds=doc.get("seconds", wall), peak_rss_mb=doc.get("peak_rss_mb", 0.0), result=doc.get("result", {}))


@dataclass
class Runs:
    """The runs of one peer: each one's seconds and peak memory, the last one's result, and whether a
    run timed out (the runs stop there)."""

    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False

    def median_s(self) -> float | None:
        return round(median(self.seconds), 3) if self.seconds else None

    def peak_mb(self) -> float | None:
        return max(self.peak_rss_mb) if self.peak_rss_mb else None


def measure_runs(module: str, args: Callable[[int], dict[str, Any]], reps: int, timeout: float | None = None) -> Runs:
    """``reps`` runs of :func:`measure_subprocess` with ``args(r)`` for run ``r``, stopping at a timeout."""
    out = Runs()
    for r in range(reps):
        meas = measure_subprocess(module, args(r), timeout=timeout)
        if meas is None:
            out.timed_out = True
            break
        out.seconds.append(meas.seconds)
        out.peak_rss_mb.append(meas.peak_rss_mb)
        out.result = meas.result
    return out


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB (VmHWM: ``ru_maxrss`` would carry the parent's
    peak across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tuned_if(icefield: bool) -> AbstractContextManager[None]:
    """The process of a child that runs icefield is tuned as the ``icefield`` program tunes its own
    (:func:`icefield.process.tuned`, entered before pyarrow loads); a peer's process is left as it is."""
    if not icefield:
        return nullcontext()
    from icefield.process import tuned

    return tuned()


def emit(seconds: float, result: dict[str, Any], peak_mb: float | None = None) -> None:
    """Print the one JSON line a measured child reports. ``peak_mb``: the peak to report when the child
    went on to check its result after the measured work (by default, the peak so far)."""
    peak = peak_rss_mb() if peak_mb is None else peak_mb
    print(json.dumps({"seconds": seconds, "peak_rss_mb": round(peak, 1), "result": result}), flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine() -> dict[str, Any]:
    import duckdb
    import pyarrow
    import pyiceberg

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "pyiceberg": pyiceberg.__version__,
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
    }


def table_digest(arrow_table: Any, key: str) -> dict[str, Any]:
    """Row count and an order-independent content hash of an Arrow table (DuckDB's row hash summed)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("t", arrow_table)
        cols = ", ".join(f'"{c}"' for c in arrow_table.column_names)
        n, h, nkeys = con.execute(f'select count(*), sum(hash({cols})::hugeint)::varchar, count(distinct "{key}") from t').fetchone()
    finally:
        con.close()
    return {"rows": int(n), "hash": str(h), "distinct_keys": int(nkeys)}


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))


OBSERVED = "observe"
"""The child argument that turns observation on (``bench.observe_overhead``)."""


def observation(pushgateway: str, lineage_path: str) -> dict[str, Any]:
    """The ``icefield.yaml`` settings of an observed run: metrics pushed to ``pushgateway`` at the end, lineage
    events appended to the file ``lineage_path`` (what a platform team turns on)."""
    return {"metrics": {"pushgateway": pushgateway, "job": "bench"}, "lineage": {"transport": "file", "path": lineage_path}}


def warm_observation() -> None:
    """Import what an observed run imports (openlineage-python's client alone takes ~0.25 s), before the clock
    starts, as each workload warms the imports of its run: the overhead measured is per batch, not start-up."""
    import openlineage.client  # noqa: F401
    import prometheus_client  # noqa: F401

    import icefield.observe.lineage  # noqa: F401
    import icefield.observe.metrics  # noqa: F401


@contextmanager
def observers_for(project: Any) -> Iterator[list[Any]]:
    """The observers ``icefield run`` registers for ``project`` (its ``metrics:`` and ``lineage:`` settings),
    pushing the metrics when the block ends: what an observed run costs, from its first event to its push."""
    from icefield.observe.configured import configured_observers
    from icefield.observe.metrics import run_metrics

    with run_metrics(project.config.metrics, project.root) as metrics:
        yield [*metrics, *configured_observers(project)]
