"""``python -m bench [w1] [w2] [w3] [w4] [w5] [w6] [gates] [s3] [w7] [airflow] [observe] [w8]``: run the workloads (default all, in order) and write
``build/bench/results.json`` (``BENCH_DIR`` moves it); each workload also keeps its own results."""

from __future__ import annotations

import json
import sys
from typing import Any

from bench import (
    airflow_overhead,
    gates,
    observe_overhead,
    s3_store,
    w1_load,
    w2_merge,
    w3_cdc,
    w4_compact,
    w5_tpch,
    w6_stream,
    w7_spark,
    w8_http,
)
from bench.common import machine, scale, work_dir

WORKLOADS = {
    "w1": w1_load.run,
    "w2": w2_merge.run,
    "w3": w3_cdc.run,
    "w4": w4_compact.run,
    "w5": w5_tpch.run,
    "w6": w6_stream.run,
    "gates": gates.run,
    "s3": s3_store.run,
    "w7": w7_spark.run,
    "airflow": airflow_overhead.run,
    "observe": observe_overhead.run,
    "w8": w8_http.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}", file=sys.stderr
        )
        return 2
    doc: dict[str, Any] = {"machine": machine(), "scale": scale(), "results": {}}
    for name in names:
        doc["results"][name] = WORKLOADS[name]()
    path = work_dir("w1").parent / "results.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
