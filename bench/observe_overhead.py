"""Observation overhead: W6 and W3 with metrics and lineage on, beside the same runs with them off.

A platform team turns on what docs/metrics.md and docs/lineage.md describe: the run's metrics pushed to a
Pushgateway when it ends, and OpenLineage events written to a file. Both observe the run's events (a few per
batch, none per row), so an observed run must take as long as an unobserved one: the issue's target is
within 3%. Each workload runs its icefield child (``bench.w6_stream``'s, ``bench.w3_cdc``'s) off and on in
alternating pairs against one broker and one Pushgateway (Debian's ``prometheus-pushgateway``, started here
on a free port), so that the machine's drift falls on both sides alike; the ratio is on/off of the medians.

Start-up is left out on both sides (each child imports what its run will import before the clock starts;
openlineage-python's client alone takes ~0.25 s to import, once per process).

``python -m bench observe``; ``BENCH_OBSERVE_PAIRS`` pairs per workload (default 4); ``BENCH_SCALE`` as the
workloads' own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench import w3_cdc, w6_stream
from bench.common import OBSERVED, machine, measure_subprocess, median, print_table, work_dir


def pairs() -> int:
    return int(os.environ.get("BENCH_OBSERVE_PAIRS", "4"))


def _alternate(module: str, args: Any, n: int) -> dict[str, list[float]]:
    """``n`` pairs of runs of ``module`` with ``args(observed, r)``, off then on, on then off, ...: seconds per side."""
    out: dict[str, list[float]] = {"off": [], "on": [], "off_cpu": [], "on_cpu": []}
    for r in range(n):
        order = (False, True) if r % 2 == 0 else (True, False)
        for observed in order:
            child = args(observed, r)
            meas = measure_subprocess(module, child)
            if meas is None:
                raise RuntimeError(f"{module} timed out")
            side = "on" if observed else "off"
            out[side].append(meas.seconds)
            out[f"{side}_cpu"].append(float(meas.result["cpu_s"]))
            if observed:
                lineage = Path(child["root"]) / "lineage.jsonl"
                assert lineage.exists() and lineage.stat().st_size > 0, f"the observed run wrote no lineage events to {lineage}"
    return out


def run() -> dict[str, Any]:
    from stack.kafka import Kafka
    from stack.prometheus import Pushgateway

    root = work_dir("observe")
    n = pairs()
    print(f"Observation overhead: W6 and W3, metrics pushed and lineage written vs neither, {n} alternating pairs each; machine {machine()}")
    gateway = Pushgateway(root / f"stack-{time.time_ns()}", port=w3_cdc.free_port())
    gateway.up(timeout=60)
    kafka = Kafka(root / f"kafka-{time.time_ns()}", port=w3_cdc.free_port(), controller_port=w3_cdc.free_port())
    kafka.heap = "768m"
    kafka.up(timeout=180)
    doc: dict[str, Any] = {}
    try:
        bootstrap = kafka.bootstrap_servers
        # W6: 1M JSON messages (x BENCH_SCALE) appended
        messages = w6_stream.size()
        topic = w6_stream.prepare_topic(bootstrap, messages)
        batch = int(os.environ.get("BENCH_W6_BATCH", "250000"))

        def w6_args(observed: bool, r: int) -> dict[str, Any]:
            return {"peer": "icefield", "bootstrap": bootstrap, "topic": topic, "batch_size": batch, "root": str(root / f"w6-{'on' if observed else 'off'}-{r}"),
                    OBSERVED: observed, "pushgateway": gateway.url()}  # fmt: skip

        doc["w6"] = {"messages": messages, **_alternate("bench.w6_stream", w6_args, n)}
        # W3: 500k Debezium events (x BENCH_SCALE) merged by key
        n_events, n_keys = w3_cdc.sizes()
        stream = w3_cdc.deliveries(w3_cdc.history(n_events, n_keys))
        w3_cdc.produce(bootstrap, stream)

        def w3_args(observed: bool, r: int) -> dict[str, Any]:
            return {"peer": "icefield", "bootstrap": bootstrap, "messages": len(stream), "merge_mode": "copy-on-write",
                    "root": str(root / f"w3-{'on' if observed else 'off'}-{r}-{time.time_ns()}"), OBSERVED: observed, "pushgateway": gateway.url()}  # fmt: skip

        doc["w3"] = {"events": len(stream), **_alternate("bench.w3_cdc", w3_args, n)}
    finally:
        kafka.stop()
        gateway.stop()
    rows = []
    for name, d in doc.items():
        off, on = median(d["off"]), median(d["on"])
        off_cpu, on_cpu = median(d["off_cpu"]), median(d["on_cpu"])
        d.update(off_s=round(off, 3), on_s=round(on, 3), ratio=round(on / off, 4), cpu_ratio=round(on_cpu / off_cpu, 4))
        rows.append([
            name.upper(), round(off, 2), round(on, 2), f"{on / off - 1:+.1%}", round(off_cpu, 2), round(on_cpu, 2), f"{on_cpu / off_cpu - 1:+.1%}",
            ", ".join(f"{x:.2f}" for x in d["off"]), ", ".join(f"{x:.2f}" for x in d["on"]),
        ])
    print_table(
        "Observation overhead (medians; target: on within 3% of off)",
        ["workload", "off s", "on s", "on vs off", "off CPU s", "on CPU s", "CPU on vs off", "off runs", "on runs"],
        rows,
    )
    (root / "results.json").write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
