"""Benchmarks: each workload runs icefield beside its peers on the same machine and data, checks that
all produce the same result, then prints medians and ratios (see PERFORMANCE.md of the design notes)."""
